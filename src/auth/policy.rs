//! Room policy: which rooms a socket may join.

use std::collections::{HashMap, HashSet};

use super::Identity;
use crate::events::ids::{is_automatic_kind, InvalidId};
use crate::events::RoomName;

/// Room kinds any authenticated socket may join unless the deployment says otherwise.
pub const DEFAULT_KINDS: &[&str] = &["batch", "exam", "course", "timetable", "incident"];

/// A refused join or leave: a stable code and a message that says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RoomError {
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl RoomError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Who may join what.
#[derive(Debug, Clone)]
pub struct RoomPolicy {
    /// Kinds a socket may join on request.
    pub kinds: HashSet<String>,
    /// For a kind listed here, only these roles may join it.
    pub roles_per_kind: HashMap<String, HashSet<String>>,
    /// Most rooms a socket may be in on request (the automatic rooms do not count).
    pub max_rooms_per_socket: usize,
    /// Longest room name accepted.
    pub max_room_len: usize,
}

impl Default for RoomPolicy {
    fn default() -> Self {
        Self {
            kinds: DEFAULT_KINDS.iter().map(|k| k.to_string()).collect(),
            roles_per_kind: HashMap::new(),
            max_rooms_per_socket: 50,
            max_room_len: 128,
        }
    }
}

impl RoomPolicy {
    /// Parses a room name, turning a bad one into the `invalid_room` error.
    pub fn parse_room(&self, name: &str) -> Result<RoomName, RoomError> {
        RoomName::parse(name, self.max_room_len)
            .map_err(|InvalidId(m)| RoomError::new("invalid_room", m))
    }

    /// Whether `who`, currently in `joined` requested rooms, may join `room`.
    pub fn check_join(
        &self,
        who: &Identity,
        room: &RoomName,
        joined: usize,
    ) -> Result<(), RoomError> {
        match room.kind() {
            kind if is_automatic_kind(kind) => {
                return Err(RoomError::new(
                    "forbidden_room",
                    format!(
                        "{room} is an automatic room: a socket is always in its own institution: and user: rooms and can never join anyone else's"
                    ),
                ))
            }
            kind if !self.kinds.contains(kind) => {
                let mut kinds: Vec<&str> = self.kinds.iter().map(String::as_str).collect();
                kinds.sort_unstable();
                return Err(RoomError::new(
                    "room_kind_not_allowed",
                    format!("rooms of kind {kind} cannot be joined; joinable kinds are {}", kinds.join(", ")),
                ));
            }
            kind if self
                .roles_per_kind
                .get(kind)
                .is_some_and(|roles| !roles.contains(&who.role)) =>
            {
                return Err(RoomError::new(
                    "forbidden_role",
                    format!("role {} may not join {kind} rooms", who.role),
                ));
            }
            _ => {}
        }
        if joined >= self.max_rooms_per_socket {
            return Err(RoomError::new(
                "too_many_rooms",
                format!(
                    "a socket may be in at most {} rooms besides its automatic ones; leave one first",
                    self.max_rooms_per_socket
                ),
            ));
        }
        Ok(())
    }

    /// Whether `room` may be left on request (the automatic rooms may not).
    pub fn check_leave(&self, room: &RoomName) -> Result<(), RoomError> {
        if is_automatic_kind(room.kind()) {
            return Err(RoomError::new(
                "forbidden_room",
                format!("{room} is an automatic room and cannot be left"),
            ));
        }
        Ok(())
    }

    /// Parses `kind=ROLE|ROLE;kind=ROLE` into per-kind role lists.
    pub fn parse_roles_per_kind(spec: &str) -> Result<HashMap<String, HashSet<String>>, String> {
        let mut out = HashMap::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, roles) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' must look like kind=ROLE|ROLE"))?;
            let roles: HashSet<String> = roles
                .split('|')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect();
            if roles.is_empty() {
                return Err(format!("'{part}' lists no role"));
            }
            out.insert(kind.trim().to_string(), roles);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{TenantId, UserId};

    fn who(role: &str) -> Identity {
        Identity {
            user_id: UserId::parse("10").unwrap(),
            tenant: TenantId::parse("1").unwrap(),
            role: role.into(),
        }
    }

    #[test]
    fn default_policy() {
        let p = RoomPolicy::default();
        let r = |s| p.parse_room(s).unwrap();
        assert!(p.check_join(&who("STUDENT"), &r("batch:1"), 0).is_ok());
        for (room, joined, code) in [
            ("user:11", 0, "forbidden_room"),
            ("institution:2", 0, "forbidden_room"),
            ("secret:1", 0, "room_kind_not_allowed"),
            ("batch:1", 50, "too_many_rooms"),
        ] {
            let e = p.check_join(&who("ADMIN"), &r(room), joined).unwrap_err();
            assert_eq!(e.code, code, "{room}");
        }
        assert_eq!(p.parse_room("nope").unwrap_err().code, "invalid_room");
        assert!(p.check_leave(&r("user:10")).is_err());
    }

    #[test]
    fn roles_per_kind() {
        let p = RoomPolicy {
            roles_per_kind: RoomPolicy::parse_roles_per_kind(
                "incident=ADMIN|INVIGILATOR; exam=ADMIN",
            )
            .unwrap(),
            ..RoomPolicy::default()
        };
        let incident = p.parse_room("incident:3").unwrap();
        assert!(p.check_join(&who("INVIGILATOR"), &incident, 0).is_ok());
        assert_eq!(
            p.check_join(&who("STUDENT"), &incident, 0)
                .unwrap_err()
                .code,
            "forbidden_role"
        );
        assert!(RoomPolicy::parse_roles_per_kind("incident").is_err());
        assert!(RoomPolicy::parse_roles_per_kind("incident=").is_err());
    }
}
