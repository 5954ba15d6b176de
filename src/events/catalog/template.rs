//! Default-room templates: `institution:{institutionId}`, `user:{payload.userId}`,
//! `exam:{payload.examId}`. A template is a room kind, a colon, and an id made of literal text
//! and placeholders; it is checked when the catalog loads and filled in per event.

use serde_json::Value;

use crate::events::ids::{self, RoomName, TenantId, INSTITUTION_KIND, MAX_KIND_LEN};

/// The default room of a channel whose `defaultRoom` is absent: the tenant's room.
pub const DEFAULT_ROOM: &str = "institution:{institutionId}";

/// A parsed `defaultRoom` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tenant,
    Payload(String),
}

/// Why a template cannot be filled in for one event: the field at fault and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillError {
    /// `missing_field` (absent or null) or `invalid_field` (unusable value, bad room).
    pub code: &'static str,
    /// The payload field, e.g. `payload.userId`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RoomTemplate {
    /// Parses and checks a template; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<RoomTemplate, String> {
        let Some((kind, id)) = text.split_once(':') else {
            return Err(format!(
                "{text:?} is not a room template; write kind:id, e.g. {DEFAULT_ROOM} or user:{{payload.userId}}"
            ));
        };
        if !ids::kind_ok(kind) {
            return Err(format!(
                "the room kind {kind:?} must be 1-{MAX_KIND_LEN} characters of a-z or '_'"
            ));
        }
        let mut parts = vec![Part::Literal(format!("{kind}:"))];
        let mut rest = id;
        while let Some((literal, after)) = rest.split_once('{') {
            if literal.contains('}') {
                return Err(format!("unmatched '}}' in {text:?}"));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_owned()));
            }
            let Some((name, tail)) = after.split_once('}') else {
                return Err(format!("unclosed '{{' in {text:?}"));
            };
            parts.push(placeholder(name)?);
            rest = tail;
        }
        if rest.contains('}') {
            return Err(format!("unmatched '}}' in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        let literal_id_ok = parts[1..].iter().all(|p| match p {
            Part::Literal(s) => s.bytes().all(ids::is_room_id_char),
            _ => true,
        });
        if parts.len() == 1 || !literal_id_ok {
            return Err(format!(
                "the room id of {text:?} must be placeholders and letters, digits, '_', '-' or '.'"
            ));
        }
        if kind == INSTITUTION_KIND && parts[1..] != [Part::Tenant] {
            return Err(format!(
                "an {INSTITUTION_KIND}: room can only be the event's own tenant: write {DEFAULT_ROOM}"
            ));
        }
        Ok(RoomTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The payload fields the template reads.
    pub fn payload_fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Payload(f) => Some(f.as_str()),
            _ => None,
        })
    }

    /// The room of one event: placeholders filled from its tenant and payload.
    pub fn fill(
        &self,
        tenant: &TenantId,
        payload: &Value,
        max_room_len: usize,
    ) -> Result<RoomName, FillError> {
        if let [Part::Literal(kind), Part::Tenant] = self.parts.as_slice() {
            if kind.strip_suffix(':') == Some(INSTITUTION_KIND) {
                return Ok(RoomName::institution(tenant));
            }
        }
        let mut room = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => room.push_str(s),
                Part::Tenant => room.push_str(tenant.as_str()),
                Part::Payload(f) => match payload.get(f) {
                    Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                        room.push_str(&n.to_string())
                    }
                    Some(Value::String(s)) if !s.is_empty() => room.push_str(s),
                    other => {
                        let missing = matches!(other, None | Some(Value::Null));
                        return Err(FillError {
                            code: if missing { "missing_field" } else { "invalid_field" },
                            field: format!("payload.{f}"),
                            message: format!(
                                "an event without rooms goes to {}, so payload.{f} (an integer or a non-empty string) is required",
                                self.text
                            ),
                        });
                    }
                },
            }
        }
        RoomName::parse(&room, max_room_len).map_err(|e| FillError {
            code: "invalid_field",
            field: self
                .payload_fields()
                .next()
                .map_or_else(|| "payload".to_owned(), |f| format!("payload.{f}")),
            message: format!(
                "the default room {room} (from {}) is not a valid room: {}",
                self.text, e.0
            ),
        })
    }
}

fn placeholder(name: &str) -> Result<Part, String> {
    if name == "institutionId" {
        return Ok(Part::Tenant);
    }
    match name.strip_prefix("payload.") {
        Some(field) if !field.is_empty() && !field.contains(['.', '{', '}']) => {
            Ok(Part::Payload(field.to_owned()))
        }
        _ => Err(format!(
            "unknown placeholder {{{name}}}; use {{institutionId}} or {{payload.<field>}} (a top-level payload field)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("3").unwrap()
    }

    fn payload(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn templates_fill_from_tenant_and_payload() {
        let t = RoomTemplate::parse(DEFAULT_ROOM).unwrap();
        assert_eq!(
            t.fill(&tenant(), &payload("{}"), 64).unwrap().as_str(),
            "institution:3"
        );
        let t = RoomTemplate::parse("user:{payload.userId}").unwrap();
        assert_eq!(t.payload_fields().collect::<Vec<_>>(), ["userId"]);
        let p = payload(r#"{"userId": 61}"#);
        assert_eq!(t.fill(&tenant(), &p, 64).unwrap().as_str(), "user:61");
        let t = RoomTemplate::parse("exam:{payload.examId}-hall.{payload.hall}").unwrap();
        let p = payload(r#"{"examId": "e9", "hall": 2}"#);
        assert_eq!(
            t.fill(&tenant(), &p, 64).unwrap().as_str(),
            "exam:e9-hall.2"
        );
    }

    #[test]
    fn unusable_values_name_the_field() {
        let t = RoomTemplate::parse("user:{payload.userId}").unwrap();
        let e = t.fill(&tenant(), &payload("{}"), 64).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("missing_field", "payload.userId")
        );
        let e = t
            .fill(&tenant(), &payload(r#"{"userId":null}"#), 64)
            .unwrap_err();
        assert_eq!(e.code, "missing_field");
        for bad in [
            r#"{"userId":true}"#,
            r#"{"userId":""}"#,
            r#"{"userId":1.5}"#,
        ] {
            let e = t.fill(&tenant(), &payload(bad), 64).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_str()),
                ("invalid_field", "payload.userId"),
                "{bad}"
            );
        }
        let e = t
            .fill(&tenant(), &payload(r#"{"userId":"a b"}"#), 64)
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("invalid_field", "payload.userId")
        );
        assert!(e.message.contains("not a valid room"), "{}", e.message);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "user",
            "User:{payload.userId}",
            ":{payload.userId}",
            "user:",
            "user:{payload.userId",
            "user:payload.userId}",
            "user:{payload.}",
            "user:{payload.a.b}",
            "user:{userId}",
            "user:{payload.userId} x",
            "institution:{payload.institutionId}",
            "institution:1",
        ] {
            assert!(RoomTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
