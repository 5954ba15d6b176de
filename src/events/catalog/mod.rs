//! The event catalog: every channel the gateway knows, its events, the JSON Schema of each
//! event's payload, and the room an event goes to when its publisher names none.
//!
//! The catalog is data: one JSON document (`catalog/elms.json` in the repository, embedded as
//! the default; `--catalog FILE` replaces it). The same document generates the SDK's TypeScript
//! types, so adding an event type is one edit of that file. Its shape:
//!
//! ```json
//! { "name": "elms", "version": 1,
//!   "$defs": { "id": { "anyOf": [...] } },
//!   "channels": {
//!     "notification": {
//!       "description": "Per-user notifications",
//!       "defaultRoom": "user:{payload.userId}",
//!       "events": { "new_notification": { "description": "...", "payload": { "type": "object", ... } } } } } }
//! ```
//!
//! Payload schemas are JSON Schema 2020-12 and may refer to the document's `$defs` with
//! `{"$ref": "#/$defs/id"}`; nothing else is ever fetched (remote references are refused when
//! the catalog loads). Validation only *reads* a payload: the bytes relayed are always the
//! publisher's own, and fields the catalog does not know pass through untouched.

mod load;
mod template;
mod validate;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use template::RoomTemplate;
pub use validate::{parse_payload, ParsedPayload, PayloadError};

/// The catalog built into the binary: `catalog/elms.json`.
pub const ELMS_JSON: &str = include_str!("../../../catalog/elms.json");

/// Socket.IO event names a channel may never take: the client library reserves some, and the
/// gateway's own protocol uses the others.
pub const RESERVED_EVENT_NAMES: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
    "authenticate",
    "authenticated",
    "auth_error",
    "join",
    "leave",
    "refresh",
    "ping",
    "pong",
    "resync",
    "presence",
];

/// Whether `s` is a well-formed channel or event name: 1-64 characters of a-z, 0-9 or `_`,
/// starting with a letter (so every channel is a valid Socket.IO event name).
pub fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A loaded, checked catalog.
#[derive(Debug)]
pub struct Catalog {
    name: String,
    version: i64,
    channels: Vec<ChannelSpec>,
    by_name: HashMap<String, usize>,
    /// The document as served by `GET /v1/catalog` and printed by `realtime-gateway catalog`.
    json: String,
    etag: String,
}

/// One channel: its events and its default room.
#[derive(Debug)]
pub struct ChannelSpec {
    name: String,
    default_room: RoomTemplate,
    events: Vec<EventSpec>,
}

/// One event type: its name and the compiled schema of its payload.
#[derive(Debug)]
pub struct EventSpec {
    name: String,
    schema: validate::PayloadSchema,
}

/// Why a catalog cannot be used: the file, the JSON pointer of the problem, and what is wrong.
/// Displayed on one line, e.g. `custom.json: /channels/feed/defaultRoom: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {}: {message}", if pointer.is_empty() { "/" } else { pointer })]
pub struct CatalogError {
    /// The file (or `built-in catalog/elms.json`).
    pub source_name: String,
    /// JSON pointer (RFC 6901) of the offending part; empty for the whole document.
    pub pointer: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl Catalog {
    /// The built-in ELMS catalog, loaded once per process.
    pub fn elms() -> Arc<Catalog> {
        static ELMS: OnceLock<Arc<Catalog>> = OnceLock::new();
        ELMS.get_or_init(|| {
            // The embedded document is checked by this module's tests; failing here is a build
            // defect, not an input error.
            let catalog = Catalog::from_json(ELMS_JSON, "built-in catalog/elms.json")
                .expect("the built-in catalog is valid");
            Arc::new(catalog)
        })
        .clone()
    }

    /// Reads and checks a catalog file.
    pub fn from_file(path: &Path) -> Result<Catalog, CatalogError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
            source_name: name.clone(),
            pointer: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Catalog::from_json(&text, &name)
    }

    /// Checks a catalog document; `source_name` names it in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<Catalog, CatalogError> {
        load::load(text).map_err(|(pointer, message)| CatalogError {
            source_name: source_name.to_owned(),
            pointer,
            message,
        })
    }

    /// The catalog's name (`elms`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The catalog's version number.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// A channel by wire name.
    pub fn channel(&self, name: &str) -> Option<&ChannelSpec> {
        self.by_name.get(name).map(|&i| &self.channels[i])
    }

    /// Every channel, in document order.
    pub fn channels(&self) -> &[ChannelSpec] {
        &self.channels
    }

    /// The effective document as compact JSON (every channel's `defaultRoom` filled in).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// A strong entity tag of [`Catalog::json`], quoted as HTTP wants it.
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

impl ChannelSpec {
    /// The channel's wire name, also the Socket.IO event name clients listen to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where an event of this channel goes when its publisher names no rooms.
    pub fn default_room(&self) -> &RoomTemplate {
        &self.default_room
    }

    /// An event type of this channel by wire name.
    pub fn event(&self, name: &str) -> Option<&EventSpec> {
        self.events.iter().find(|e| e.name == name)
    }

    /// The channel's event types, in document order.
    pub fn events(&self) -> &[EventSpec] {
        &self.events
    }
}

impl EventSpec {
    /// The event type's wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a parsed payload against the event's schema (see [`parse_payload`]).
    pub fn validate(&self, payload: &ParsedPayload) -> Result<(), PayloadError> {
        self.schema.validate(payload)
    }

    /// The names of the payload's required fields, in schema order.
    pub fn required_fields(&self) -> impl Iterator<Item = &str> {
        self.schema.required_fields()
    }
}
