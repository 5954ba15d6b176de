//! Validated identifiers: tenants, users, rooms and the internal room key.
//!
//! Every string that names a tenant, a user or a room is parsed once at the edge (a token's
//! claims, a `join` request, a publish request) into one of these types, so the rest of the code
//! never re-checks a raw string and never confuses one kind of id with another.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// Longest tenant or user id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an id or a room name was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn check_id(what: &str, s: &str) -> Result<(), InvalidId> {
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(is_id_char) {
        return Err(InvalidId(format!(
            "{what} must be 1-{MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"
        )));
    }
    Ok(())
}

/// Turns a JSON id (number or string) into its string form.
fn id_from_json(what: &str, v: &serde_json::Value) -> Result<String, InvalidId> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(InvalidId(format!("{what} must be an integer or a string"))),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and validates an id given as a string.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                check_id($what, s)?;
                Ok(Self(Arc::from(s)))
            }

            /// Parses an id given as a JSON number or string.
            pub fn from_json(v: &serde_json::Value) -> Result<Self, InvalidId> {
                Self::parse(&id_from_json($what, v)?)
            }

            /// The id as it appears in room names and on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant (an institution). Every event and every room belongs to exactly one.
    TenantId,
    "tenant id"
);
id_type!(
    /// A user, from the verified `sub` (or configured) claim.
    UserId,
    "user id"
);

/// Room kind of the automatic per-tenant room.
pub const INSTITUTION_KIND: &str = "institution";
/// Room kind of the automatic per-user room.
pub const USER_KIND: &str = "user";

/// Whether rooms of `kind` are automatic: every socket is in them by its identity, and none
/// joins or leaves them on request.
pub fn is_automatic_kind(kind: &str) -> bool {
    matches!(kind, INSTITUTION_KIND | USER_KIND)
}
/// Longest room kind accepted, in bytes.
pub const MAX_KIND_LEN: usize = 32;

/// Whether `kind` is a well-formed room kind: 1-[`MAX_KIND_LEN`] bytes of a-z or `_`.
pub(crate) fn kind_ok(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
}

/// Whether `c` may appear in a room id: letters, digits, `_`, `-` and `.`.
pub(crate) fn is_room_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

/// A client-facing room name `kind:id`, such as `batch:456` or `user:10`.
///
/// The kind is lowercase letters and `_`; the id is letters, digits, `_`, `-` and `.`.
/// The overall length cap is a policy setting, checked by [`RoomName::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName {
    full: Arc<str>,
    colon: usize,
}

impl RoomName {
    /// Parses `kind:id`, refusing names longer than `max_len` bytes.
    pub fn parse(s: &str, max_len: usize) -> Result<Self, InvalidId> {
        if s.len() > max_len {
            return Err(InvalidId(format!(
                "room name is {} bytes long; the limit is {max_len}",
                s.len()
            )));
        }
        let Some(colon) = s.find(':') else {
            return Err(InvalidId(
                "room name must look like kind:id, for example batch:456".into(),
            ));
        };
        let (kind, id) = (&s[..colon], &s[colon + 1..]);
        if !kind_ok(kind) {
            return Err(InvalidId(format!(
                "room kind must be 1-{MAX_KIND_LEN} characters of a-z or '_'"
            )));
        }
        if id.is_empty() || !id.bytes().all(is_room_id_char) {
            return Err(InvalidId(
                "room id must be letters, digits, '_', '-' or '.'".into(),
            ));
        }
        Ok(Self {
            full: Arc::from(s),
            colon,
        })
    }

    /// The automatic room of a tenant: `institution:<tenant>`.
    pub fn institution(tenant: &TenantId) -> Self {
        Self::from_parts(INSTITUTION_KIND, tenant.as_str())
    }

    /// The automatic room of a user: `user:<id>`.
    pub fn user(user: &UserId) -> Self {
        Self::from_parts(USER_KIND, user.as_str())
    }

    fn from_parts(kind: &str, id: &str) -> Self {
        Self {
            full: Arc::from(format!("{kind}:{id}")),
            colon: kind.len(),
        }
    }

    /// The part before the colon (`batch`).
    pub fn kind(&self) -> &str {
        &self.full[..self.colon]
    }

    /// The part after the colon (`456`).
    pub fn id(&self) -> &str {
        &self.full[self.colon + 1..]
    }

    /// The whole name (`batch:456`).
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for RoomName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

/// A room as the gateway keys it internally: tenant and room together.
///
/// `batch:456` of tenant 1 and `batch:456` of tenant 2 have different keys, so nothing that is
/// addressed by key (Socket.IO rooms, bus channels, history) can cross tenants. The key's string
/// form is `<tenant>/<room>`; tenant ids cannot contain `/`, so the form is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    tenant: TenantId,
    room: RoomName,
    key: Arc<str>,
}

impl RoomKey {
    /// The key of `room` within `tenant`.
    pub fn new(tenant: TenantId, room: RoomName) -> Self {
        let key = Arc::from(format!("{}/{}", tenant.as_str(), room.as_str()));
        Self { tenant, room, key }
    }

    /// Parses the `<tenant>/<room>` form back (used on messages read from the bus).
    pub fn parse(key: &str, max_room_len: usize) -> Result<Self, InvalidId> {
        let (tenant, room) = key
            .split_once('/')
            .ok_or_else(|| InvalidId("room key must look like tenant/kind:id".into()))?;
        Ok(Self::new(
            TenantId::parse(tenant)?,
            RoomName::parse(room, max_room_len)?,
        ))
    }

    /// The tenant the room belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The client-facing room name.
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    /// `<tenant>/<room>`: the Socket.IO room name and the suffix of bus channels and keys.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_accept_numbers_and_strings() {
        assert_eq!(TenantId::from_json(&json!(1)).unwrap().as_str(), "1");
        assert_eq!(
            TenantId::from_json(&json!("inst-7")).unwrap().as_str(),
            "inst-7"
        );
        assert!(TenantId::from_json(&json!(1.5)).is_err());
        assert!(TenantId::from_json(&json!(null)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a/b").is_err());
        assert!(UserId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn room_names_are_checked() {
        let r = RoomName::parse("batch:456", 128).unwrap();
        assert_eq!((r.kind(), r.id()), ("batch", "456"));
        for bad in [
            "batch",
            ":1",
            "batch:",
            "Batch:1",
            "batch:a b",
            "batch:1/2",
            "b:1:2",
        ] {
            assert!(RoomName::parse(bad, 128).is_err(), "{bad} accepted");
        }
        assert!(RoomName::parse("batch:12345", 8).is_err());
    }

    #[test]
    fn room_keys_separate_tenants() {
        let room = RoomName::parse("batch:456", 128).unwrap();
        let a = RoomKey::new(TenantId::parse("1").unwrap(), room.clone());
        let b = RoomKey::new(TenantId::parse("2").unwrap(), room);
        assert_ne!(a, b);
        assert_eq!(a.as_str(), "1/batch:456");
        assert_eq!(RoomKey::parse("1/batch:456", 128).unwrap(), a);
        assert!(RoomKey::parse("1/2/batch:4", 128).is_err());
    }

    #[test]
    fn automatic_rooms() {
        let t = TenantId::parse("9").unwrap();
        let u = UserId::parse("10").unwrap();
        assert_eq!(RoomName::institution(&t).as_str(), "institution:9");
        assert_eq!(RoomName::user(&u).kind(), "user");
    }
}
