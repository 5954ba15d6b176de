//! Events as they travel: the publish request, the bus event and the client envelope.
//!
//! A publish request is validated here, once, whatever path it came by (HTTP, CLI, Rust
//! `Publisher`). The payload is kept as raw JSON from the first byte to the last: clients get it
//! exactly as the publisher wrote it, field order and formatting included.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::catalog::{self, Catalog, ChannelSpec, EventSpec, ParsedPayload};
use super::ids::{RoomName, TenantId, INSTITUTION_KIND};

pub use super::catalog::RESERVED_EVENT_NAMES;

/// Server → client: a user's first connection entered a room (presence events).
pub const PRESENCE_JOIN: &str = "presence_join";
/// Server → client: a user's last connection left a room (presence events).
pub const PRESENCE_LEAVE: &str = "presence_leave";
/// Channels only the gateway publishes (into room histories, like any event): publishers may
/// not use them, and the bus relays them whatever the catalog says.
pub const GATEWAY_CHANNELS: &[&str] = &[PRESENCE_JOIN, PRESENCE_LEAVE];

/// Longest event id accepted, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// One event on the bus: everything but its room and offset, which the bus assigns per room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique id, the same in every room the event was published to.
    pub id: Arc<str>,
    /// Channel wire name; also the Socket.IO event name clients listen to.
    pub channel: Arc<str>,
    /// Event type within the channel.
    pub event: Arc<str>,
    /// The tenant the event belongs to (a publisher may send it as a number or a string).
    #[serde(rename = "institutionId", deserialize_with = "id_string")]
    pub tenant: Arc<str>,
    /// Payload exactly as published.
    pub payload: Box<RawValue>,
    /// Publish time, milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// Reads an id given as a JSON integer or string into its string form.
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Int(i64),
        Str(String),
    }
    Ok(match Id::deserialize(d)? {
        Id::Int(n) => Arc::from(n.to_string()),
        Id::Str(s) => Arc::from(s),
    })
}

/// What a socket receives: the event, its room (client-facing name) and its offset there.
#[derive(Debug, Serialize)]
pub struct ClientEnvelope<'a> {
    /// Event id.
    pub id: &'a str,
    /// Channel wire name.
    pub channel: &'a str,
    /// Event type.
    pub event: &'a str,
    /// Payload, byte for byte as published.
    pub payload: &'a RawValue,
    /// Publish time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Client-facing room name, e.g. `batch:456`.
    pub room: &'a str,
    /// Position of this event in its room: grows by one per event.
    pub offset: u64,
}

impl Event {
    /// The envelope a socket in `room` receives for this event at `offset`.
    pub fn client_envelope<'a>(&'a self, room: &'a RoomName, offset: u64) -> ClientEnvelope<'a> {
        ClientEnvelope {
            id: &self.id,
            channel: &self.channel,
            event: &self.event,
            payload: &self.payload,
            timestamp: self.timestamp,
            room: room.as_str(),
            offset,
        }
    }
}

/// Limits and strictness applied to every publish request.
#[derive(Debug, Clone)]
pub struct PublishRules {
    /// Largest payload accepted, in bytes of JSON.
    pub max_payload_bytes: usize,
    /// Most rooms one event may be addressed to.
    pub max_rooms: usize,
    /// Longest room name accepted.
    pub max_room_len: usize,
    /// Refuse channels, events and payloads that are not in the catalog.
    pub strict_catalog: bool,
    /// The channels, events, payload schemas and default rooms publishes are checked against.
    pub catalog: Arc<Catalog>,
}

/// A refused publish request: a code a program can match, the field at fault and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PublishError {
    /// Stable machine-readable code (`missing_field`, `unknown_event`, ...).
    pub code: &'static str,
    /// The field at fault, as a dotted path (`payload.scriptId`, `rooms[2]`).
    pub field: Option<String>,
    /// What is wrong and what a valid value looks like.
    pub message: String,
}

impl PublishError {
    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An `invalid_field` error: the field has the wrong kind or form.
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new("invalid_field", field, message)
    }

    /// True when the request was refused for its size (HTTP 413) rather than its content.
    pub fn is_too_large(&self) -> bool {
        self.code == "payload_too_large"
    }
}

/// A publish request that passed validation: the event and the rooms it goes to.
#[derive(Debug, Clone)]
pub struct ValidPublish {
    /// The event to publish.
    pub event: Event,
    /// Its tenant, validated.
    pub tenant: TenantId,
    /// The rooms of `tenant` it goes to, without duplicates, in request order.
    pub rooms: Vec<RoomName>,
}

const KNOWN_FIELDS: &[&str] = &[
    "channel",
    "event",
    "institutionId",
    "payload",
    "rooms",
    "id",
    "timestamp",
];

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_field<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    field: &str,
    expected: &str,
) -> Result<T, PublishError> {
    serde_json::from_str(raw.get())
        .map_err(|_| PublishError::invalid(field, format!("{field} must be {expected}")))
}

impl PublishRules {
    /// Validates one publish request object (`{ channel, event, institutionId, payload, rooms?,
    /// id?, timestamp? }`) given as raw JSON.
    pub fn validate(&self, body: &RawValue) -> Result<ValidPublish, PublishError> {
        let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(body.get()).map_err(|_| {
            PublishError {
                code: "invalid_body",
                field: None,
                message: "the request must be a JSON object { channel, event, institutionId, payload, rooms?, id? }".into(),
            }
        })?;
        if let Some(unknown) = fields.keys().find(|k| !KNOWN_FIELDS.contains(k)) {
            return Err(PublishError::new(
                "unknown_field",
                *unknown,
                format!(
                    "unknown field {unknown}; accepted fields are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            ));
        }
        let get = |name: &str| {
            fields.get(name).copied().ok_or_else(|| {
                PublishError::new("missing_field", name, format!("{name} is required"))
            })
        };

        let channel: String = parse_field(get("channel")?, "channel", "a string")?;
        let event: String = parse_field(get("event")?, "event", "a string")?;
        let tenant_json: serde_json::Value = parse_field(
            get("institutionId")?,
            "institutionId",
            "an integer or a string",
        )?;
        let tenant = TenantId::from_json(&tenant_json)
            .map_err(|e| PublishError::invalid("institutionId", e.0))?;
        let payload = get("payload")?;

        let (known_channel, known_event) = self.check_channel_and_event(&channel, &event)?;
        let parsed = self.check_payload(known_event, payload, &tenant)?;

        let id: Arc<str> = match fields.get("id") {
            None => Arc::from(ulid::Ulid::new().to_string()),
            Some(raw) => {
                let id: String = parse_field(raw, "id", "a string")?;
                let ok = !id.is_empty()
                    && id.len() <= MAX_EVENT_ID_LEN
                    && id.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
                    });
                if !ok {
                    return Err(PublishError::invalid(
                        "id",
                        format!("id must be 1-{MAX_EVENT_ID_LEN} characters of letters, digits, '_', '-', '.' or ':'"),
                    ));
                }
                Arc::from(id)
            }
        };
        let timestamp = match fields.get("timestamp") {
            None => now_millis(),
            Some(raw) => parse_field::<u64>(
                raw,
                "timestamp",
                "milliseconds since the Unix epoch (a non-negative integer)",
            )?
            .min(i64::MAX as u64) as i64,
        };

        let rooms = match fields.get("rooms") {
            None => vec![self.default_room(known_channel, &parsed, &tenant)?],
            Some(raw) => self.check_rooms(raw, &tenant)?,
        };

        Ok(ValidPublish {
            event: Event {
                id,
                channel: Arc::from(channel),
                event: Arc::from(event),
                tenant: Arc::from(tenant.as_str()),
                payload: payload.to_owned(),
                timestamp,
            },
            tenant,
            rooms,
        })
    }

    /// The channel and event of a request, looked up in the catalog. Outside strict mode an
    /// unknown event (or channel) passes, unchecked; a known channel still routes by its
    /// default room.
    fn check_channel_and_event(
        &self,
        channel: &str,
        event: &str,
    ) -> Result<(Option<&ChannelSpec>, Option<&EventSpec>), PublishError> {
        if !catalog::name_ok(channel)
            || RESERVED_EVENT_NAMES.contains(&channel)
            || GATEWAY_CHANNELS.contains(&channel)
        {
            return Err(PublishError::invalid(
                "channel",
                "channel must be 1-64 characters of a-z, 0-9 or '_', starting with a letter, and not a reserved Socket.IO event name or a gateway channel (presence_join, presence_leave)",
            ));
        }
        if !catalog::name_ok(event) {
            return Err(PublishError::invalid(
                "event",
                "event must be 1-64 characters of a-z, 0-9 or '_', starting with a letter",
            ));
        }
        let Some(known_channel) = self.catalog.channel(channel) else {
            if self.strict_catalog {
                let all: Vec<&str> = self.catalog.channels().iter().map(|c| c.name()).collect();
                return Err(PublishError::new(
                    "unknown_channel",
                    "channel",
                    format!(
                        "unknown channel {channel}; known channels are {}",
                        all.join(", ")
                    ),
                ));
            }
            return Ok((None, None));
        };
        match known_channel.event(event) {
            _ if !self.strict_catalog => Ok((Some(known_channel), None)),
            Some(e) => Ok((Some(known_channel), Some(e))),
            None => {
                let all: Vec<&str> = known_channel.events().iter().map(|e| e.name()).collect();
                Err(PublishError::new(
                    "unknown_event",
                    "event",
                    format!(
                        "channel {channel} has no event {event}; its events are {}",
                        all.join(", ")
                    ),
                ))
            }
        }
    }

    /// Checks the payload (size, shape, schema in strict mode, tenant) and returns it parsed,
    /// once, for the default room.
    fn check_payload(
        &self,
        known: Option<&EventSpec>,
        payload: &RawValue,
        tenant: &TenantId,
    ) -> Result<ParsedPayload, PublishError> {
        if payload.get().len() > self.max_payload_bytes {
            return Err(PublishError::new(
                "payload_too_large",
                "payload",
                format!(
                    "payload is {} bytes; the limit is {} bytes",
                    payload.get().len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let parsed = catalog::parse_payload(payload)
            .map_err(|_| PublishError::invalid("payload", "payload must be a JSON object"))?;
        if let Some(event) = known {
            event
                .validate(&parsed)
                .map_err(|e| PublishError::new("invalid_payload", e.field, e.message))?;
        }
        // Whatever the mode, a payload may not claim another tenant than its envelope.
        if let Some(v) = parsed.value().get("institutionId") {
            if TenantId::from_json(v).ok().as_ref() != Some(tenant) {
                return Err(PublishError::new(
                    "tenant_mismatch",
                    "payload.institutionId",
                    format!("payload.institutionId must equal institutionId ({tenant})"),
                ));
            }
        }
        Ok(parsed)
    }

    /// The room of an event published without rooms: its channel's `defaultRoom` template
    /// filled in, or the tenant's room for a channel the catalog does not know.
    fn default_room(
        &self,
        channel: Option<&ChannelSpec>,
        payload: &ParsedPayload,
        tenant: &TenantId,
    ) -> Result<RoomName, PublishError> {
        let Some(channel) = channel else {
            return Ok(RoomName::institution(tenant));
        };
        channel
            .default_room()
            .fill(tenant, payload.value(), self.max_room_len)
            .map_err(|e| PublishError::new(e.code, e.field, e.message))
    }

    fn check_rooms(
        &self,
        raw: &RawValue,
        tenant: &TenantId,
    ) -> Result<Vec<RoomName>, PublishError> {
        let names: Vec<&RawValue> = parse_field(raw, "rooms", "an array of room names")?;
        if names.is_empty() {
            return Err(PublishError::invalid(
                "rooms",
                "rooms must not be empty; leave it out for the channel's default route",
            ));
        }
        if names.len() > self.max_rooms {
            return Err(PublishError::new(
                "too_many_rooms",
                "rooms",
                format!(
                    "{} rooms given; at most {} per event",
                    names.len(),
                    self.max_rooms
                ),
            ));
        }
        let mut seen = HashSet::new();
        let mut rooms = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let field = format!("rooms[{i}]");
            let s: String = parse_field(name, &field, "a string")?;
            let room = RoomName::parse(&s, self.max_room_len)
                .map_err(|e| PublishError::new("invalid_room", field.clone(), e.0))?;
            if room.kind() == INSTITUTION_KIND && room.id() != tenant.as_str() {
                return Err(PublishError::new(
                    "tenant_mismatch",
                    field,
                    format!("{s} is another tenant's room; an event of tenant {tenant} can only go to institution:{tenant}"),
                ));
            }
            if seen.insert(room.clone()) {
                rooms.push(room);
            }
        }
        Ok(rooms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(strict: bool) -> PublishRules {
        PublishRules {
            max_payload_bytes: 1024,
            max_rooms: 4,
            max_room_len: 64,
            strict_catalog: strict,
            catalog: Catalog::elms(),
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    const SCRIPT: &str = r#"{"scriptId": 1, "batchId": 456, "studentId": 9, "studentName": "Ada", "courseCode": "CS101", "courseName": "Intro", "submittedAt": "2026-11-28T10:00:00Z", "institutionId": 1, "extra":  [1,2]}"#;

    fn publish(body: &str, strict: bool) -> Result<ValidPublish, PublishError> {
        rules(strict).validate(&raw(body))
    }

    #[test]
    fn valid_request_keeps_payload_bytes_and_routes_to_tenant() {
        let body = format!(
            r#"{{"channel":"script_submission","event":"script_submitted","institutionId":1,"payload":{SCRIPT}}}"#
        );
        let p = publish(&body, true).unwrap();
        assert_eq!(p.event.payload.get(), SCRIPT);
        assert_eq!(p.rooms, vec![RoomName::parse("institution:1", 64).unwrap()]);
        assert_eq!(p.tenant.as_str(), "1");
        assert_eq!(p.event.id.len(), 26);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (
                r#"{"event":"x","institutionId":1,"payload":{}}"#,
                "missing_field",
                "channel",
            ),
            (
                r#"{"channel":"connect","event":"x","institutionId":1,"payload":{}}"#,
                "invalid_field",
                "channel",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1.5,"payload":{}}"#,
                "invalid_field",
                "institutionId",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":[]}"#,
                "invalid_field",
                "payload",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"room":["batch:1"]}"#,
                "unknown_field",
                "room",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"rooms":["batch:1","bad"]}"#,
                "invalid_room",
                "rooms[1]",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"rooms":["institution:2"]}"#,
                "tenant_mismatch",
                "rooms[0]",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{"institutionId":2}}"#,
                "tenant_mismatch",
                "payload.institutionId",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"rooms":[]}"#,
                "invalid_field",
                "rooms",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"rooms":["a:1","a:2","a:3","a:4","a:5"]}"#,
                "too_many_rooms",
                "rooms",
            ),
            (
                r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"id":"has space"}"#,
                "invalid_field",
                "id",
            ),
            (
                r#"{"channel":"notification","event":"x","institutionId":1,"payload":{}}"#,
                "missing_field",
                "payload.userId",
            ),
        ];
        for (body, code, field) in cases {
            let e = publish(body, false).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (code, Some(field)), "{body}");
        }
        let big = format!(
            r#"{{"channel":"a","event":"x","institutionId":1,"payload":{{"s":"{}"}}}}"#,
            "x".repeat(2000)
        );
        assert!(publish(&big, false).unwrap_err().is_too_large());
    }

    #[test]
    fn strict_mode_checks_the_payload_schema() {
        let body = r#"{"channel":"script_submission","event":"script_submitted","institutionId":1,"payload":{"institutionId":1}}"#;
        let e = publish(body, true).unwrap_err();
        assert_eq!(e.code, "invalid_payload");
        assert!(e.field.unwrap().starts_with("payload."));
        // Not strict: any well-formed channel and event pass.
        publish(body, false).unwrap();
        let unknown_event =
            r#"{"channel":"script_submission","event":"nope","institutionId":1,"payload":{}}"#;
        let e = publish(unknown_event, true).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_event", Some("event"))
        );
        let custom =
            r#"{"channel":"custom_feed","event":"tick","institutionId":"t1","payload":{}}"#;
        assert_eq!(publish(custom, true).unwrap_err().code, "unknown_channel");
        publish(custom, false).unwrap();
    }

    #[test]
    fn notifications_route_to_the_recipient_and_rooms_dedupe() {
        let body = r#"{"channel":"notification","event":"custom","institutionId":1,"payload":{"userId":"42"}}"#;
        let p = publish(body, false).unwrap();
        assert_eq!(p.rooms[0].as_str(), "user:42");
        let body = r#"{"channel":"a","event":"x","institutionId":1,"payload":{},"rooms":["batch:1","batch:1","exam:2"]}"#;
        let p = publish(body, false).unwrap();
        assert_eq!(p.rooms.len(), 2);
    }

    #[test]
    fn a_custom_catalog_routes_by_its_templates_and_knows_only_its_channels() {
        let catalog = Catalog::from_json(
            r#"{"name":"custom","version":1,"channels":{"exam_feed":{
                "defaultRoom":"exam:{payload.examId}",
                "events":{"paper_started":{"payload":{"type":"object","required":["examId","institutionId"],
                  "properties":{"examId":{"type":["integer","string"]},"institutionId":{}}}}}}}}"#,
            "custom.json",
        )
        .unwrap();
        let rules = PublishRules {
            catalog: Arc::new(catalog),
            ..rules(true)
        };
        let ok = r#"{"channel":"exam_feed","event":"paper_started","institutionId":1,"payload":{"examId":9,"institutionId":1}}"#;
        let p = rules.validate(&raw(ok)).unwrap();
        assert_eq!(p.rooms[0].as_str(), "exam:9");
        let missing = r#"{"channel":"exam_feed","event":"paper_started","institutionId":1,"payload":{"institutionId":1}}"#;
        let e = rules.validate(&raw(missing)).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_payload", Some("payload.examId"))
        );
        let stock = format!(
            r#"{{"channel":"script_submission","event":"script_submitted","institutionId":1,"payload":{SCRIPT}}}"#
        );
        let e = rules.validate(&raw(&stock)).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_channel", Some("channel"))
        );
        assert!(
            e.message.ends_with("known channels are exam_feed"),
            "{}",
            e.message
        );
    }

    #[test]
    fn client_envelope_keeps_payload_verbatim() {
        let body = format!(
            r#"{{"channel":"script_submission","event":"script_submitted","institutionId":1,"payload":{SCRIPT},"id":"e1","timestamp":5}}"#
        );
        let p = publish(&body, true).unwrap();
        let json = serde_json::to_string(&p.event.client_envelope(&p.rooms[0], 7)).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"id":"e1","channel":"script_submission","event":"script_submitted","payload":{SCRIPT},"timestamp":5,"room":"institution:1","offset":7}}"#
            )
        );
    }
}
