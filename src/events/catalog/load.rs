//! Loading a catalog document: every check that makes a catalog usable, each failing with the
//! JSON pointer of the problem. Schemas are compiled here, once, offline: a `$ref` may only point
//! into the document's `$defs`, so a catalog can never make the gateway fetch anything.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use jsonschema::Draft;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::template::{RoomTemplate, DEFAULT_ROOM};
use super::validate::PayloadSchema;
use super::{name_ok, Catalog, ChannelSpec, EventSpec, RESERVED_EVENT_NAMES};

/// A problem: the JSON pointer where it is, and what is wrong.
pub(super) type Problem = (String, String);

const TOP_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "$defs",
    "channels",
    "$comment",
];
const CHANNEL_KEYS: &[&str] = &["description", "defaultRoom", "events", "$comment"];
const EVENT_KEYS: &[&str] = &["description", "payload", "$comment"];

/// Escapes one JSON pointer token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn problem(pointer: impl Into<String>, message: impl Into<String>) -> Problem {
    (pointer.into(), message.into())
}

fn object<'v>(
    value: &'v Value,
    pointer: &str,
    what: &str,
) -> Result<&'v Map<String, Value>, Problem> {
    value
        .as_object()
        .ok_or_else(|| problem(pointer, format!("{what} must be a JSON object")))
}

/// The member `key` of `map` (at `pointer`): required, a JSON object, and not empty (`empty`
/// says why).
fn entries<'v>(
    map: &'v Map<String, Value>,
    pointer: &str,
    key: &str,
    empty: &str,
) -> Result<&'v Map<String, Value>, Problem> {
    let at = format!("{pointer}/{key}");
    let value = map
        .get(key)
        .ok_or_else(|| problem(&at, format!("{key} is required")))?;
    match object(value, &at, key)? {
        m if m.is_empty() => Err(problem(at, empty)),
        m => Ok(m),
    }
}

fn known_keys(map: &Map<String, Value>, pointer: &str, allowed: &[&str]) -> Result<(), Problem> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(problem(
            format!("{pointer}/{}", token(k)),
            format!("unknown key {k:?}; allowed here: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Parses and checks a catalog document.
pub(super) fn load(text: &str) -> Result<Catalog, Problem> {
    let mut doc: Value =
        serde_json::from_str(text).map_err(|e| problem("", format!("not valid JSON: {e}")))?;
    let top = object(&doc, "", "the catalog")?;
    known_keys(top, "", TOP_KEYS)?;
    let name = match top.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(problem("/name", "name must be a non-empty string")),
    };
    let version = top
        .get("version")
        .and_then(Value::as_i64)
        .ok_or_else(|| problem("/version", "version must be an integer"))?;
    let defs = match top.get("$defs") {
        None => Map::new(),
        Some(v) => object(v, "/$defs", "$defs")?.clone(),
    };
    for (key, schema) in &defs {
        check_schema(schema, &format!("/$defs/{}", token(key)), &defs)?;
    }
    let channels_doc = entries(top, "", "channels", "a catalog needs at least one channel")?;

    let order = document_order(text, channels_doc);
    let mut channels = Vec::with_capacity(channels_doc.len());
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (channel, event_order) in &order {
        let Some(spec) = channels_doc.get(channel) else {
            continue;
        };
        let at = format!("/channels/{}", token(channel));
        if !name_ok(channel) {
            return Err(problem(at, format!("channel name {channel:?} must be 1-64 characters of a-z, 0-9 or '_', starting with a letter (it is the Socket.IO event name clients listen to)")));
        }
        if RESERVED_EVENT_NAMES.contains(&channel.as_str()) {
            return Err(problem(at, format!("channel name {channel:?} is reserved: Socket.IO or the gateway's protocol uses it ({})", RESERVED_EVENT_NAMES.join(", "))));
        }
        let spec = object(spec, &at, "a channel")?;
        known_keys(spec, &at, CHANNEL_KEYS)?;
        let events_doc = entries(spec, &at, "events", "a channel needs at least one event")?;
        let mut events = Vec::with_capacity(events_doc.len());
        for event in event_order {
            let Some(def) = events_doc.get(event) else {
                continue;
            };
            let eat = format!("{at}/events/{}", token(event));
            if !name_ok(event) {
                return Err(problem(eat, format!("event name {event:?} must be 1-64 characters of a-z, 0-9 or '_', starting with a letter")));
            }
            if let Some(other) = seen.insert(event, channel) {
                return Err(problem(eat, format!("event {event} is also in channel {other}; event names are unique across channels")));
            }
            let def = object(def, &eat, "an event")?;
            known_keys(def, &eat, EVENT_KEYS)?;
            let pat = format!("{eat}/payload");
            let payload = def
                .get("payload")
                .ok_or_else(|| problem(&pat, "payload (a JSON Schema of an object) is required"))?;
            let schema = compile(payload, &pat, &defs)?;
            events.push(EventSpec {
                name: event.clone(),
                schema,
            });
        }
        let rat = format!("{at}/defaultRoom");
        let template = match spec.get("defaultRoom") {
            None => DEFAULT_ROOM,
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(problem(
                    rat,
                    "defaultRoom must be a string such as user:{payload.userId}",
                ))
            }
        };
        let default_room = RoomTemplate::parse(template).map_err(|m| problem(&rat, m))?;
        // Every event of the channel must carry what its default room reads, or a valid event
        // published without rooms would be refused.
        for field in default_room.payload_fields() {
            if let Some(e) = events
                .iter()
                .find(|e| !e.required_fields().any(|r| r == field))
            {
                return Err(problem(rat, format!("{template} reads payload.{field}, which event {} does not require; add it to that payload's \"required\"", e.name)));
            }
        }
        channels.push(ChannelSpec {
            name: channel.clone(),
            default_room,
            events,
        });
    }

    // The effective document: what `GET /v1/catalog` serves, defaults spelled out.
    if let Some(Value::Object(chs)) = doc.get_mut("channels") {
        for spec in chs.values_mut().filter_map(Value::as_object_mut) {
            spec.entry("defaultRoom").or_insert(DEFAULT_ROOM.into());
        }
    }
    let json = effective_json(&doc, &order);
    let by_name = channels
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    // SipHash with fixed keys: the same document gives the same tag on every gateway.
    let mut h = std::hash::DefaultHasher::new();
    json.hash(&mut h);
    let etag = format!("\"{name}-{version}-{:016x}\"", h.finish());
    Ok(Catalog {
        name,
        version,
        channels,
        by_name,
        json,
        etag,
    })
}

/// Channel names and, for each, its event names, in the order the document lists them
/// (`serde_json::Map` sorts keys; the catalog's order is what people and tools read).
type Order = Vec<(String, Vec<String>)>;

/// Reads the order of channels and events from the text; `channels` (already checked to be an
/// object) gives the names should the text disagree, which a parsed document cannot.
fn document_order(text: &str, channels: &Map<String, Value>) -> Order {
    #[derive(serde::Deserialize)]
    struct Doc {
        channels: Keys<Channel>,
    }
    #[derive(serde::Deserialize)]
    struct Channel {
        #[serde(default)]
        events: Keys<IgnoredAny>,
    }
    match serde_json::from_str::<Doc>(text) {
        Ok(doc) => doc
            .channels
            .0
            .into_iter()
            .map(|(name, c)| (name, c.events.0.into_iter().map(|(e, _)| e).collect()))
            .collect(),
        Err(_) => channels
            .iter()
            .map(|(name, c)| {
                let events = c
                    .get("events")
                    .and_then(Value::as_object)
                    .map(|e| e.keys().cloned().collect())
                    .unwrap_or_default();
                (name.clone(), events)
            })
            .collect(),
    }
}

/// The entries of a JSON object, in document order.
#[derive(Default)]
struct Keys<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Keys<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Keys<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Keys<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = a.next_entry::<String, T>()? {
                    out.push(entry);
                }
                Ok(Keys(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The document as compact JSON with its channels and events in document order and the keys
/// around them in a fixed order (name, version, description, $defs, channels).
fn effective_json(doc: &Value, order: &Order) -> String {
    fn object<'k>(entries: impl Iterator<Item = (&'k str, String)>) -> String {
        let entries: Vec<String> = entries
            .map(|(key, value)| format!("{}:{value}", Value::from(key)))
            .collect();
        format!("{{{}}}", entries.join(","))
    }
    fn fixed<'k>(
        map: &'k Value,
        keys: &'k [&str],
        last: &'k str,
    ) -> impl Iterator<Item = (&'k str, String)> {
        keys.iter()
            .filter(move |k| **k != last)
            .filter_map(|k| Some((*k, map.get(*k)?.to_string())))
    }
    let channels = order.iter().map(|(name, events)| {
        let spec = &doc["channels"][name];
        let events = events
            .iter()
            .filter_map(|e| Some((e.as_str(), spec["events"].get(e)?.to_string())));
        let events = [("events", object(events))];
        let channel = object(fixed(spec, CHANNEL_KEYS, "events").chain(events));
        (name.as_str(), channel)
    });
    let channels = [("channels", object(channels))];
    object(fixed(doc, TOP_KEYS, "channels").chain(channels))
}

/// Checks one schema (a payload or a `$defs` entry): valid JSON Schema 2020-12, and every
/// `$ref` local to the document's `$defs`.
fn check_schema(schema: &Value, pointer: &str, defs: &Map<String, Value>) -> Result<(), Problem> {
    check_refs(schema, pointer, defs)?;
    jsonschema::draft202012::meta::validate(schema).map_err(|e| {
        problem(
            format!("{pointer}{}", e.instance_path()),
            format!("not a valid JSON Schema (2020-12): {}", e.masked()),
        )
    })
}

/// Refuses every `$ref` that is not `#/$defs/<an entry of the document>`.
fn check_refs(schema: &Value, pointer: &str, defs: &Map<String, Value>) -> Result<(), Problem> {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                let at = format!("{pointer}/{}", token(key));
                match (key.as_str(), value) {
                    ("$ref" | "$dynamicRef", Value::String(r)) => {
                        let local = r
                            .strip_prefix("#/$defs/")
                            .is_some_and(|name| !name.contains('/') && defs.contains_key(name));
                        if !local {
                            return Err(problem(at, format!("{key} {r:?} must point to an entry of the catalog's $defs (#/$defs/<name>); nothing outside the catalog is ever fetched")));
                        }
                    }
                    ("$id" | "$schema" | "$anchor" | "$dynamicAnchor", _) => {
                        return Err(problem(at, format!("{key} is not allowed in a catalog schema: payloads are JSON Schema 2020-12 and refer to each other only through #/$defs/<name>")));
                    }
                    _ => check_refs(value, &at, defs)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_refs(v, &format!("{pointer}/{i}"), defs)),
        _ => Ok(()),
    }
}

/// Compiles one payload schema with the document's `$defs` beside it.
fn compile(
    payload: &Value,
    pointer: &str,
    defs: &Map<String, Value>,
) -> Result<PayloadSchema, Problem> {
    let map = object(payload, pointer, "a payload schema")?;
    if map.get("type").and_then(Value::as_str) != Some("object") {
        return Err(problem(
            format!("{pointer}/type"),
            "a payload schema must have \"type\": \"object\"",
        ));
    }
    check_schema(payload, pointer, defs)?;
    let mut source = map.clone();
    if !defs.is_empty() {
        source.insert("$defs".to_owned(), Value::Object(defs.clone()));
    }
    let source = Value::Object(source);
    let validator = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .offline()
        .build(&source)
        .map_err(|e| {
            problem(
                pointer,
                format!("cannot compile the schema: {}", e.masked()),
            )
        })?;
    Ok(PayloadSchema { validator, source })
}

#[cfg(test)]
mod tests {
    use super::super::{Catalog, RoomTemplate, ELMS_JSON};
    use serde_json::{json, Value};

    fn elms() -> Value {
        serde_json::from_str(ELMS_JSON).unwrap()
    }

    fn err(doc: &Value) -> (String, String) {
        let e = Catalog::from_json(&doc.to_string(), "custom.json").unwrap_err();
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        assert!(e.to_string().starts_with("custom.json: "), "{e}");
        (e.pointer, e.message)
    }

    #[test]
    fn the_built_in_catalog_has_five_channels_and_seventeen_events() {
        let c = Catalog::elms();
        assert_eq!((c.name(), c.version()), ("elms", 1));
        let names: Vec<_> = c.channels().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "script_submission",
                "batch_update",
                "exam_timetable",
                "incident",
                "notification"
            ]
        );
        let grouped: Vec<(&str, Vec<&str>)> = c
            .channels()
            .iter()
            .map(|c| (c.name(), c.events().iter().map(|e| e.name()).collect()))
            .collect();
        assert_eq!(
            grouped,
            [
                (
                    "script_submission",
                    vec![
                        "script_submitted",
                        "script_verified",
                        "script_collected",
                        "script_graded"
                    ]
                ),
                (
                    "batch_update",
                    vec![
                        "batch_sealed",
                        "batch_assigned",
                        "batch_created",
                        "batch_status_changed",
                        "batch_stats_updated"
                    ]
                ),
                (
                    "exam_timetable",
                    vec![
                        "timetable_published",
                        "timetable_updated",
                        "batches_created"
                    ]
                ),
                (
                    "incident",
                    vec!["incident_reported", "incident_updated", "incident_resolved"]
                ),
                (
                    "notification",
                    vec!["new_notification", "notification_read"]
                ),
            ]
        );
        let room = |t| RoomTemplate::parse(t).unwrap();
        assert_eq!(
            c.channel("notification").unwrap().default_room(),
            &room("user:{payload.userId}")
        );
        assert_eq!(
            c.channel("incident").unwrap().default_room(),
            &room("institution:{institutionId}")
        );
        assert!(c.channel("Incident").is_none());
        assert!(c
            .channel("script_submission")
            .unwrap()
            .event("batch_created")
            .is_none());
        // The served document is the file's (every default is spelled out in it), in its order.
        let served: Value = serde_json::from_str(c.json()).unwrap();
        assert_eq!(served, elms());
        let at = |s: &str| c.json().find(s).unwrap();
        assert!(
            at("\"script_submission\"") < at("\"batch_update\"")
                && at("\"batch_update\"") < at("\"notification\"")
        );
        assert!(at("\"batch_sealed\"") < at("\"batch_assigned\""));
        assert!(c.etag().starts_with("\"elms-1-") && c.etag().ends_with('"'));
    }

    #[test]
    fn defaults_are_filled_in_and_etags_follow_the_content() {
        let doc = json!({"name":"t","version":2,"channels":{"feed":{"events":{"tick":{"payload":{"type":"object"}}}}}});
        let a = Catalog::from_json(&doc.to_string(), "a").unwrap();
        let served: Value = serde_json::from_str(a.json()).unwrap();
        assert_eq!(
            served["channels"]["feed"]["defaultRoom"],
            "institution:{institutionId}"
        );
        let b = Catalog::from_json(&doc.to_string(), "b").unwrap();
        assert_eq!(a.etag(), b.etag());
        let mut other = doc.clone();
        other["version"] = json!(3);
        let c = Catalog::from_json(&other.to_string(), "c").unwrap();
        assert_ne!(a.etag(), c.etag());
    }

    #[test]
    fn each_bad_catalog_names_the_pointer() {
        let e = Catalog::from_json("{ nope", "custom.json").unwrap_err();
        assert_eq!(e.pointer, "");
        assert!(
            e.to_string().starts_with("custom.json: /: not valid JSON"),
            "{e}"
        );

        let mut doc = elms();
        doc["channels"]["notification"]["events"]["new_notification"]["payload"]["properties"]
            ["title"] = json!({"type": "text"});
        let (p, m) = err(&doc);
        assert_eq!(
            p,
            "/channels/notification/events/new_notification/payload/properties/title/type"
        );
        assert!(m.starts_with("not a valid JSON Schema"), "{m}");

        let mut doc = elms();
        doc["channels"]["notification"]["defaultRoom"] = json!("user:{payload.userId");
        assert_eq!(err(&doc).0, "/channels/notification/defaultRoom");
        doc["channels"]["notification"]["defaultRoom"] = json!("user:{payload.link}");
        let (p, m) = err(&doc);
        assert_eq!(p, "/channels/notification/defaultRoom");
        assert!(
            m.contains("payload.link") && m.contains("does not require"),
            "{m}"
        );

        let mut doc = elms();
        doc["channels"]["incident"]["events"]["batch_created"] =
            doc["channels"]["batch_update"]["events"]["batch_created"].clone();
        let (p, m) = err(&doc);
        // Keys are read in order; whichever copy comes second is the one reported.
        assert!(p.ends_with("/events/batch_created"), "{p}");
        assert!(m.contains("also in channel"), "{m}");

        for bad in ["connect", "authenticated", "resync", "Bad", "a-b", "9lives"] {
            let mut doc = elms();
            let spec = doc["channels"]["incident"].clone();
            doc["channels"][bad] = spec;
            doc["channels"].as_object_mut().unwrap().remove("incident");
            let (p, _) = err(&doc);
            assert_eq!(p, format!("/channels/{bad}"));
        }

        let mut doc = elms();
        doc["channels"]["incident"]["events"]["incident_updated"]["payload"]["properties"]
            ["note"] = json!({"$ref": "https://example.com/note.json"});
        let (p, m) = err(&doc);
        assert_eq!(
            p,
            "/channels/incident/events/incident_updated/payload/properties/note/$ref"
        );
        assert!(
            m.contains("nothing outside the catalog is ever fetched"),
            "{m}"
        );
        doc["channels"]["incident"]["events"]["incident_updated"]["payload"]["properties"]
            ["note"] = json!({"$ref": "#/$defs/nope"});
        assert_eq!(
            err(&doc).0,
            "/channels/incident/events/incident_updated/payload/properties/note/$ref"
        );

        let mut doc = elms();
        doc["channels"]["incident"]["events"]["incident_updated"]["payload"] =
            json!({"type": "array"});
        assert_eq!(
            err(&doc).0,
            "/channels/incident/events/incident_updated/payload/type"
        );
        let mut doc = elms();
        doc["channels"]["incident"]["defaultRom"] = json!("x:{institutionId}");
        assert_eq!(err(&doc).0, "/channels/incident/defaultRom");
        let mut doc = elms();
        doc["channels"] = json!({});
        assert_eq!(err(&doc).0, "/channels");
        let mut doc = elms();
        doc["version"] = json!("1");
        assert_eq!(err(&doc).0, "/version");
    }

    #[test]
    fn a_file_that_cannot_be_read_names_itself() {
        let e = Catalog::from_file(std::path::Path::new("/nonexistent/catalog.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/catalog.json: /: cannot read the file"),
            "{e}"
        );
    }
}
