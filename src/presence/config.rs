//! Presence and lifecycle settings (validated from their flags by the gateway's settings).

use std::collections::HashSet;
use std::time::Duration;

use crate::events::ids::INSTITUTION_KIND;
use crate::events::RoomName;

/// Validated presence and lifecycle settings.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Room kinds tracked.
    pub kinds: HashSet<String>,
    /// Room kinds whose joins and leaves are emitted as room events.
    pub events: HashSet<String>,
    /// Largest member list in an answer.
    pub max_members: usize,
    /// Lease of a gateway's entries.
    pub lease: Duration,
    /// Whether the lifecycle stream is written.
    pub lifecycle: bool,
    /// Cap of each tenant's lifecycle stream.
    pub lifecycle_max_len: u64,
    /// Name of this gateway (letters, digits, `.`, `_`, `-`).
    pub gateway_name: String,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            kinds: ["exam", "batch", "incident"].map(String::from).into(),
            events: HashSet::new(),
            max_members: 1000,
            lease: Duration::from_secs(15),
            lifecycle: false,
            lifecycle_max_len: 100_000,
            gateway_name: "gateway".into(),
        }
    }
}

impl PresenceConfig {
    /// Whether rooms of this kind are tracked.
    pub fn tracks(&self, room: &RoomName) -> bool {
        self.kinds.contains(room.kind())
    }

    /// Whether joins and leaves of this room are emitted as events.
    pub fn emits(&self, room: &RoomName) -> bool {
        self.events.contains(room.kind())
    }

    /// Whether answers for this room list members (institution rooms are counts only).
    pub fn lists_members(&self, room: &RoomName) -> bool {
        room.kind() != INSTITUTION_KIND
    }
}
