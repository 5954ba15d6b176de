//! Per-socket state kept in the socket's extensions.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::auth::Identity;
use crate::events::RoomName;

/// What the gateway knows about one socket.
#[derive(Debug)]
pub struct Session {
    /// Gateway-wide id of the peer (see [`super::peer::PeerId`]).
    pub id: super::peer::PeerId,
    /// `websocket` or `polling`, as connected (a metric label).
    pub transport: &'static str,
    state: Mutex<SessionState>,
}

/// The mutable part of a session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Verified identity; `None` until the socket authenticates.
    pub identity: Option<Identity>,
    /// Expiry of the current token, seconds since the Unix epoch.
    pub exp: u64,
    /// Rooms joined on request (the automatic rooms are not listed).
    pub rooms: Vec<RoomName>,
    /// Set once the socket is leaving, so a late join cannot add a room after cleanup.
    pub closed: bool,
    /// The identity came with the handshake (not from an `authenticate` event).
    pub from_handshake: bool,
    /// The automatic rooms were entered (exactly once per socket).
    pub auto_entered: bool,
    /// Join budget: tokens left and when they were last topped up (see `take_join`).
    pub join_tokens: f32,
    /// When `join_tokens` was last topped up; `None` before the first join.
    pub join_refill: Option<std::time::Instant>,
    /// Positions the client sent in the handshake (`auth.since`), used once for its automatic rooms.
    pub handshake_since: Option<serde_json::Value>,
}

impl SessionState {
    /// Takes one join from a token bucket of `rate` joins per second (bursts of `rate`).
    /// Hand-rolled rather than a rate-limiter per socket: two fields, no clock per connection.
    pub fn take_join(&mut self, rate: u32) -> bool {
        let now = std::time::Instant::now();
        let rate = rate as f32;
        let tokens = match self.join_refill {
            None => rate,
            Some(at) => (self.join_tokens + now.duration_since(at).as_secs_f32() * rate).min(rate),
        };
        self.join_refill = Some(now);
        if tokens >= 1.0 {
            self.join_tokens = tokens - 1.0;
            true
        } else {
            self.join_tokens = tokens;
            false
        }
    }
}

impl Session {
    /// A fresh, unauthenticated session.
    pub fn new(transport: &'static str) -> Arc<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            transport,
            state: Mutex::new(SessionState::default()),
        })
    }

    /// The session's state; held for short, await-free sections only.
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This socket as presence and the lifecycle stream name it, as `identity`.
    pub fn socket<'a>(&self, identity: &'a Identity) -> crate::lifecycle::Socket<'a> {
        crate::lifecycle::Socket {
            id: self.id,
            identity,
            transport: self.transport,
        }
    }

    /// The identity, if authenticated.
    pub fn identity(&self) -> Option<Identity> {
        self.state().identity.clone()
    }
}
