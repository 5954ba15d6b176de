//! Payload validation: one parse of the payload, the JSON Schema check of its event, and errors
//! that name the field (`payload.scriptId`) and say what was expected. The payload's bytes are
//! only read; the bytes relayed stay the publisher's own.

use std::fmt;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A payload that does not match its event's schema: which field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PayloadError {
    /// Dotted path of the offending field, e.g. `payload.scriptId` or `payload.items[2].id`,
    /// or just `payload` when the problem is the payload as a whole.
    pub field: String,
    /// What is wrong, e.g. `missing required field`.
    pub message: String,
}

impl PayloadError {
    fn at(name: &str, message: impl Into<String>) -> Self {
        PayloadError {
            field: format!("payload.{name}"),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        PayloadError {
            field: "payload".to_owned(),
            message: message.into(),
        }
    }
}

/// A payload parsed once for every check of a publish (schema, tenant, default room).
#[derive(Debug, Clone)]
pub struct ParsedPayload {
    /// Always a `Value::Object`; kept as a `Value` so the validator reads it without a copy.
    object: Value,
    /// The first top-level key that appeared more than once, if any: strict validation refuses
    /// it, since receivers would disagree on which value counts.
    duplicate: Option<String>,
}

impl ParsedPayload {
    /// The payload, a JSON object (a repeated key keeps its last value, as JSON parsers do).
    pub fn value(&self) -> &Value {
        &self.object
    }
}

/// Parses a payload that must be a JSON object. Anything else is parsed again, only to say
/// what it was.
pub fn parse_payload(payload: &RawValue) -> Result<ParsedPayload, PayloadError> {
    let mut de = serde_json::Deserializer::from_str(payload.get());
    de.deserialize_any(ObjectVisitor).map_err(|_| {
        match serde_json::from_str::<Value>(payload.get()) {
            Ok(found) => PayloadError::whole(format!(
                "expected a JSON object, found {}",
                describe(&found)
            )),
            Err(e) => PayloadError::whole(format!("is not valid JSON: {}", strip_position(&e))),
        }
    })
}

/// Reads a top-level object noting repeated keys (any other value is a type error).
struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = ParsedPayload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        let mut duplicate = None;
        while let Some((key, value)) = access.next_entry::<String, Value>()? {
            if let Some(_old) = fields.insert(key.clone(), value) {
                duplicate.get_or_insert(key);
            }
        }
        Ok(ParsedPayload {
            object: Value::Object(fields),
            duplicate,
        })
    }
}

/// A compiled payload schema and the source it was compiled from (for error messages).
pub(super) struct PayloadSchema {
    pub(super) validator: Validator,
    /// The payload schema with the catalog's `$defs` merged in.
    pub(super) source: Value,
}

impl fmt::Debug for PayloadSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadSchema")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PayloadSchema {
    pub(super) fn required_fields(&self) -> impl Iterator<Item = &str> {
        self.source
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }

    /// Checks a parsed payload. The fast path is one `is_valid` walk; only a refused payload
    /// pays for collecting errors and phrasing the first one.
    pub(super) fn validate(&self, payload: &ParsedPayload) -> Result<(), PayloadError> {
        if !self.validator.is_valid(&payload.object) {
            return Err(self.explain(&payload.object));
        }
        match &payload.duplicate {
            Some(key) => Err(PayloadError::at(key, "field appears more than once")),
            None => Ok(()),
        }
    }

    /// The error to report for a refused payload: a missing required field first (in the
    /// schema's order), else the first error the validator finds.
    fn explain(&self, value: &Value) -> PayloadError {
        let errors: Vec<ValidationError> = self.validator.iter_errors(value).collect();
        let required: Vec<&str> = self.required_fields().collect();
        let missing = errors
            .iter()
            .filter_map(|e| match e.kind() {
                ValidationErrorKind::Required { property } if e.instance_path().is_empty() => {
                    property.as_str()
                }
                _ => None,
            })
            .min_by_key(|p| required.iter().position(|r| r == p));
        if let Some(name) = missing {
            return PayloadError::at(name, "missing required field");
        }
        match errors.first() {
            Some(e) => self.phrase(e),
            None => PayloadError::whole("does not match the event's schema"),
        }
    }

    fn phrase(&self, error: &ValidationError) -> PayloadError {
        let (field, instance) = walk(error, &self.source);
        let found = describe(error.instance());
        let message = match error.kind() {
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                return PayloadError {
                    field: format!("{field}.{name}"),
                    message: "missing required field".to_owned(),
                };
            }
            ValidationErrorKind::Type { .. } if error.instance_path().is_empty() => {
                format!("expected a JSON object, found {found}")
            }
            ValidationErrorKind::Type { .. }
            | ValidationErrorKind::AnyOf { .. }
            | ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::Enum { .. }
            | ValidationErrorKind::Constant { .. } => match instance {
                Some(s) => format!("expected {}, found {found}", expected(s, &self.source)),
                None => error.to_string(),
            },
            // A constraint on a value of the right kind (pattern, minimum, length...): the
            // schema's own title and example say it best; without them, the validator's words.
            _ => match instance.map(|s| resolve(s, &self.source)) {
                Some(s) if s.get("title").is_some() => {
                    let title = expected(s, &self.source);
                    match s
                        .get("examples")
                        .and_then(|x| x.get(0))
                        .and_then(Value::as_str)
                    {
                        Some(example) => format!("expected {title} such as {example}"),
                        None => format!("expected {title}, found {found}"),
                    }
                }
                _ => error.to_string(),
            },
        };
        PayloadError { field, message }
    }
}

/// The dotted path of the error's instance (`payload.items[2].id`) and the schema that applies
/// to it, found by following `properties` and `items` from the payload schema.
fn walk<'s>(error: &ValidationError, root: &'s Value) -> (String, Option<&'s Value>) {
    let mut path = String::from("payload");
    let mut schema = Some(root);
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Property(name) => {
                path.push('.');
                path.push_str(&name);
                schema = schema
                    .map(|s| resolve(s, root))
                    .and_then(|s| s.get("properties"))
                    .and_then(|p| p.get(name.as_ref()));
            }
            LocationSegment::Index(i) => {
                path.push_str(&format!("[{i}]"));
                schema = schema
                    .map(|s| resolve(s, root))
                    .and_then(|s| s.get("items"));
            }
        }
    }
    (path, schema)
}

/// Follows `$ref`s into the schema's own `$defs` (the only references a catalog may hold).
fn resolve<'s>(mut schema: &'s Value, root: &'s Value) -> &'s Value {
    for _ in 0..16 {
        let Some(target) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| root.get("$defs")?.get(name))
        else {
            break;
        };
        schema = target;
    }
    schema
}

/// What a schema accepts, phrased for "expected ...": its `title` when it has one, else its
/// types (`null` left out: it is only ever the "or absent" of an optional field).
fn expected(schema: &Value, root: &Value) -> String {
    let schema = resolve(schema, root);
    if let Some(title) = schema.get("title").and_then(Value::as_str) {
        return title.to_owned();
    }
    let alternatives = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array);
    if let Some(list) = alternatives {
        let parts: Vec<String> = list
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .map(|s| expected(s, root))
            .collect();
        return parts.join(" or ");
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let list: Vec<String> = options.iter().map(Value::to_string).collect();
        return format!("one of {}", list.join(", "));
    }
    if let Some(c) = schema.get("const") {
        return c.to_string();
    }
    let non_negative = schema.get("minimum").and_then(Value::as_f64) == Some(0.0);
    let one = |t: &str| match t {
        "string" => "a string",
        "integer" if non_negative => "a non-negative integer",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "object" => "an object",
        "array" => "an array",
        "null" => "null",
        _ => "a valid value",
    };
    match schema.get("type") {
        Some(Value::String(t)) => one(t).to_owned(),
        Some(Value::Array(ts)) => {
            let parts: Vec<&str> = ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .map(one)
                .collect();
            parts.join(" or ")
        }
        _ => "a valid value".to_owned(),
    }
}

/// A short description of a JSON value's kind, for error messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|v| v < 0) => "a negative integer",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(s) if s.is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its trailing ` at line L column C`.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(s) => s.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Catalog;
    use super::*;
    use std::collections::BTreeSet;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("test JSON is valid")
    }

    /// `f` of the built-in catalog's `event`.
    fn with_spec<T>(event: &str, f: impl FnOnce(&super::super::EventSpec) -> T) -> T {
        let catalog = Catalog::elms();
        let spec = catalog.channels().iter().find_map(|c| c.event(event));
        f(spec.unwrap_or_else(|| panic!("no event {event}")))
    }

    fn validate(event: &str, json: &str) -> Result<(), PayloadError> {
        with_spec(event, |spec| spec.validate(&parse_payload(&raw(json))?))
    }

    fn expect_err(event: &str, json: &str) -> PayloadError {
        validate(event, json).expect_err("payload should be rejected")
    }

    const ALL: [&str; 17] = [
        "script_submitted",
        "script_verified",
        "script_collected",
        "script_graded",
        "batch_sealed",
        "batch_assigned",
        "batch_created",
        "batch_status_changed",
        "batch_stats_updated",
        "timetable_published",
        "timetable_updated",
        "batches_created",
        "incident_reported",
        "incident_updated",
        "incident_resolved",
        "new_notification",
        "notification_read",
    ];

    /// A realistic valid payload for each event type.
    fn sample(event: &str) -> &'static str {
        match event {
            "script_submitted" => {
                r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","studentName":"Adaeze Okafor","courseCode":"CSC 201","courseName":"Data Structures","submittedAt":"2025-06-12T11:02:45Z","institutionId":3}"#
            }
            "script_verified" => {
                r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","verifiedBy":55,"verifiedByName":"Mr. Bello","verifiedAt":"2025-06-12T11:05:10Z","remarks":"Cover page signed","institutionId":3}"#
            }
            "script_collected" => {
                r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","collectedBy":"staff_9","collectedByName":"Mrs. Eze","collectedAt":"2025-06-12T12:00:00+01:00","institutionId":3}"#
            }
            "script_graded" => {
                r#"{"scriptId":1042,"batchId":77,"studentId":"U2021/CSC/118","courseCode":"CSC 201","gradedBy":61,"gradedByName":"Dr. Musa","score":67.5,"maxScore":100,"grade":"B","comment":null,"gradedAt":"2025-06-20T15:30:00Z","institutionId":3}"#
            }
            "batch_sealed" => {
                r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"scriptCount":48,"sealedBy":55,"sealedByName":"Mr. Bello","sealedAt":"2025-06-12T12:10:00Z","sealNumber":"SL-88213","institutionId":3}"#
            }
            "batch_assigned" => {
                r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"assignedTo":61,"assignedToName":"Dr. Musa","assignedBy":12,"assignedByName":"Exams Officer","assignedAt":"2025-06-13T08:00:00Z","dueAt":"2025-06-27","institutionId":3}"#
            }
            "batch_created" => {
                r#"{"batchId":77,"batchNumber":"B-2025-014","examId":9,"examName":"First Semester Examinations","courseCode":"CSC 201","totalSlots":50,"createdBy":12,"createdByName":"Exams Officer","institutionId":3}"#
            }
            "batch_status_changed" => {
                r#"{"batchId":77,"batchNumber":"B-2025-014","previousStatus":"sealed","status":"in_marking","changedBy":61,"changedByName":"Dr. Musa","changedAt":"2025-06-14T09:00:00Z","institutionId":3}"#
            }
            "batch_stats_updated" => {
                r#"{"batchId":77,"totalSlots":50,"submittedCount":48,"verifiedCount":48,"collectedCount":48,"gradedCount":12,"updatedAt":"2025-06-20T15:30:01Z","institutionId":3}"#
            }
            "timetable_published" => {
                r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","term":"2024/2025 First Semester","entryCount":132,"publishedBy":12,"publishedByName":"Exams Officer","publishedAt":"2025-05-02T10:00:00Z","institutionId":3}"#
            }
            "timetable_updated" => {
                r#"{"timetableId":"tt_2025_s1","examId":9,"version":4,"changeSummary":"CSC 201 moved to 14 June, 09:00","courseCode":"CSC 201","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-05-20T16:45:00Z","institutionId":3}"#
            }
            "batches_created" => {
                r#"{"timetableId":"tt_2025_s1","examId":9,"examName":"First Semester Examinations","batchCount":264,"totalSlots":13200,"createdBy":12,"createdByName":"Exams Officer","createdAt":"2025-05-21T07:30:00Z","institutionId":3}"#
            }
            "incident_reported" => {
                r#"{"incidentId":501,"examId":9,"category":"malpractice","severity":"high","description":"Phone found under answer booklet","courseCode":"CSC 201","venue":"Hall B","studentId":"U2021/CSC/118","reportedBy":55,"reportedByName":"Mr. Bello","reportedAt":"2025-06-12T10:15:00Z","institutionId":3}"#
            }
            "incident_updated" => {
                r#"{"incidentId":501,"status":"under_investigation","severity":"high","updatedBy":12,"updatedByName":"Exams Officer","updatedAt":"2025-06-13T09:00:00Z","note":"Panel convened","institutionId":3}"#
            }
            "incident_resolved" => {
                r#"{"incidentId":501,"resolution":"Script cancelled; student referred to disciplinary committee","resolvedBy":12,"resolvedByName":"Exams Officer","resolvedAt":"2025-06-30T14:00:00Z","institutionId":3}"#
            }
            "new_notification" => {
                r#"{"notificationId":"ntf_01J0A","userId":61,"title":"Batch assigned","message":"Batch B-2025-014 (CSC 201) is ready for marking.","kind":"batch_assigned","link":"/marking/batches/77","createdAt":"2025-06-13T08:00:01Z","institutionId":3}"#
            }
            "notification_read" => {
                r#"{"notificationId":"ntf_01J0A","userId":61,"readAt":"2025-06-13T08:12:30Z","institutionId":3}"#
            }
            other => panic!("no sample for {other}"),
        }
    }

    fn sample_map(event: &str) -> Map<String, Value> {
        match serde_json::from_str(sample(event)).expect("sample is JSON") {
            Value::Object(m) => m,
            other => panic!("sample for {event} is not an object: {other}"),
        }
    }

    fn with(event: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut map = sample_map(event);
        edit(&mut map);
        Value::Object(map).to_string()
    }

    /// The sample for `event` with `key` set to `value`.
    fn set(event: &str, key: &str, value: impl Into<Value>) -> String {
        with(event, |m| {
            m.insert(key.to_owned(), value.into());
        })
    }

    /// The sample for `event` without `key`.
    fn without(event: &str, key: &str) -> String {
        with(event, |m| {
            m.remove(key);
        })
    }

    fn required(event: &str) -> Vec<String> {
        with_spec(event, |spec| {
            spec.required_fields().map(str::to_owned).collect()
        })
    }

    /// The payload schema's property names of `event`.
    fn properties(event: &str) -> BTreeSet<String> {
        let doc: Value = serde_json::from_str(super::super::ELMS_JSON).expect("catalog JSON");
        doc["channels"]
            .as_object()
            .expect("channels")
            .values()
            .find_map(|c| c["events"].get(event))
            .and_then(|e| e["payload"]["properties"].as_object())
            .expect("properties")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_sample_is_valid_and_uses_only_catalog_fields() {
        for e in ALL {
            assert_eq!(validate(e, sample(e)), Ok(()), "sample for {e}");
            let names = properties(e);
            for key in sample_map(e).keys() {
                assert!(names.contains(key), "sample for {e} has unknown key {key}");
            }
            assert!(required(e).contains(&"institutionId".to_owned()), "{e}");
        }
    }

    #[test]
    fn each_missing_required_field_is_named() {
        for e in ALL {
            let fields = required(e);
            assert!(fields.len() >= 4, "{e}");
            for name in fields {
                let err = expect_err(e, &without(e, &name));
                assert_eq!(err.field, format!("payload.{name}"), "{e}");
                assert_eq!(err.message, "missing required field");
                assert_eq!(
                    err.to_string(),
                    format!("payload.{name}: missing required field")
                );
            }
        }
    }

    #[test]
    fn several_missing_fields_report_the_first_in_schema_order() {
        let json = with("script_submitted", |m| {
            m.remove("courseName");
            m.remove("batchId");
        });
        assert_eq!(
            expect_err("script_submitted", &json).field,
            "payload.batchId"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = "script_submitted";
        let err = expect_err(e, &set(e, "studentName", 5));
        assert_eq!(err.field, "payload.studentName");
        assert_eq!(err.message, "expected a string, found a number");

        let err = expect_err(e, &set(e, "scriptId", true));
        assert_eq!(err.field, "payload.scriptId");
        assert_eq!(
            err.message,
            "expected an id (an integer or a non-empty string), found a boolean"
        );

        let err = expect_err(e, &set(e, "batchId", 1.5));
        assert_eq!(err.field, "payload.batchId");
        assert!(err.message.ends_with("found a fractional number"));

        let err = expect_err(e, &set(e, "courseCode", Value::Null));
        assert_eq!(err.field, "payload.courseCode");
        assert_eq!(err.message, "expected a string, found null");

        let b = "batch_created";
        let err = expect_err(b, &set(b, "totalSlots", -3));
        assert_eq!(err.field, "payload.totalSlots");
        assert_eq!(
            err.message,
            "expected a non-negative integer, found a negative integer"
        );

        let err = expect_err(b, &set(b, "totalSlots", "50"));
        assert_eq!(
            err.message,
            "expected a non-negative integer, found a string"
        );
        let err = expect_err(b, &set(b, "totalSlots", u64::from(u32::MAX) + 1));
        assert_eq!(err.field, "payload.totalSlots");

        let g = "script_graded";
        let err = expect_err(g, &set(g, "score", "67"));
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("payload.score", "expected a number, found a string")
        );
    }

    #[test]
    fn every_required_field_refuses_a_wrong_type() {
        // An array is the wrong kind for every field of the ELMS catalog.
        for e in ALL {
            for name in required(e) {
                let err = expect_err(e, &set(e, &name, serde_json::json!([1])));
                assert_eq!(err.field, format!("payload.{name}"), "{e}");
                assert!(
                    err.message.ends_with("found an array"),
                    "{e}: {}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn timestamps_must_look_like_iso8601() {
        let e = "notification_read";
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "12/06/2025",
            "2025-06-12X",
        ] {
            let err = expect_err(e, &set(e, "readAt", bad));
            assert_eq!(err.field, "payload.readAt", "{bad}");
            assert_eq!(
                err.message,
                "expected an ISO-8601 timestamp string such as 2025-06-12T09:30:00Z"
            );
        }
        let err = expect_err(e, &set(e, "readAt", 1_718_000_000));
        assert_eq!(
            err.message,
            "expected an ISO-8601 timestamp string, found a number"
        );
        for good in [
            "2025-06-12",
            "2025-06-12T08:12:30.123+01:00",
            "2025-06-12 08:12:30",
        ] {
            assert_eq!(validate(e, &set(e, "readAt", good)), Ok(()));
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_null_but_not_mistyped() {
        let e = "script_verified";
        assert_eq!(validate(e, &without(e, "remarks")), Ok(()));
        assert_eq!(validate(e, &set(e, "remarks", Value::Null)), Ok(()));
        let err = expect_err(e, &set(e, "remarks", 3));
        assert_eq!(err.field, "payload.remarks");
        assert_eq!(err.message, "expected a string, found a number");

        let i = "incident_reported";
        let err = expect_err(i, &set(i, "studentId", ""));
        assert_eq!(err.field, "payload.studentId");
        assert_eq!(
            err.message,
            "expected an id (an integer or a non-empty string), found an empty string"
        );
        assert_eq!(validate(i, &set(i, "studentId", Value::Null)), Ok(()));
        let a = "batch_assigned";
        assert_eq!(validate(a, &set(a, "dueAt", Value::Null)), Ok(()));
        assert_eq!(
            expect_err(a, &set(a, "dueAt", "soon")).field,
            "payload.dueAt"
        );
    }

    #[test]
    fn non_object_payloads_are_rejected_as_a_whole() {
        for (json, found) in [
            ("[1,2]", "an array"),
            ("null", "null"),
            ("\"batch\"", "a string"),
            ("42", "a number"),
        ] {
            let err = expect_err("batch_created", json);
            assert_eq!(err.field, "payload");
            assert_eq!(
                err.message,
                format!("expected a JSON object, found {found}")
            );
        }
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let e = "script_submitted";
        let json = with(e, |m| {
            m.insert("examHall".into(), "Hall B".into());
            m.insert(
                "meta".into(),
                serde_json::json!({"source": "kiosk-4", "retries": [1, 2]}),
            );
        });
        assert_eq!(validate(e, &json), Ok(()));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let json = r#"{"notificationId":1,"userId":61,"userId":62,"readAt":"2025-06-13T08:12:30Z","institutionId":3}"#;
        let err = expect_err("notification_read", json);
        assert_eq!(err.field, "payload.userId");
        assert_eq!(err.message, "field appears more than once");
    }

    #[test]
    fn numeric_and_string_ids_are_both_accepted() {
        let e = "new_notification";
        for id in [Value::from(61), Value::from("usr_01HZX"), Value::from(-1)] {
            let json = with(e, |m| {
                m.insert("userId".into(), id.clone());
                m.insert("institutionId".into(), id.clone());
            });
            assert_eq!(validate(e, &json), Ok(()), "id {id}");
        }
        let err = expect_err(e, &without(e, "userId"));
        assert_eq!(err.field, "payload.userId");
        let err = expect_err(e, &set(e, "userId", u64::MAX));
        assert_eq!(err.field, "payload.userId");
    }

    #[test]
    fn validation_leaves_the_raw_bytes_alone() {
        let json = "{ \"notificationId\" : 1 ,\"userId\":61,\"readAt\":\"2025-06-13T08:12:30Z\",\"institutionId\":3, \"x\": 1.000 }";
        let payload = raw(json);
        assert_eq!(validate("notification_read", payload.get()), Ok(()));
        assert_eq!(payload.get(), json);
    }

    #[test]
    fn nested_paths_are_dotted() {
        let catalog = Catalog::from_json(
            r#"{"name":"t","version":1,"channels":{"feed":{"events":{"tick":{"payload":{
                "type":"object","required":["items"],
                "properties":{"items":{"type":"array","items":{"type":"object","required":["id"],
                  "properties":{"id":{"type":"integer"}}}}}}}}}}}"#,
            "test",
        )
        .expect("catalog");
        let tick = catalog
            .channel("feed")
            .and_then(|c| c.event("tick"))
            .expect("tick");
        let check = |json: &str| tick.validate(&parse_payload(&raw(json)).expect("object"));
        let err = check(r#"{"items":[{"id":1},{"id":"x"}]}"#).unwrap_err();
        assert_eq!(err.field, "payload.items[1].id");
        assert_eq!(err.message, "expected an integer, found a string");
        let err = check(r#"{"items":[{"id":1},{}]}"#).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("payload.items[1].id", "missing required field")
        );
        assert_eq!(check(r#"{"items":[]}"#), Ok(()));
    }
}
