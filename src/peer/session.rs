//! Per-socket state: one state machine per connected client, whichever transport carries it.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::auth::Identity;
use crate::events::{RoomKey, RoomName};

/// What the gateway knows about one socket.
#[derive(Debug)]
pub struct Session {
    /// Gateway-wide id of the peer (see [`super::PeerId`]).
    pub id: super::PeerId,
    /// `websocket` or `polling`, as connected (a metric label).
    pub transport: &'static str,
    /// When the socket connected, ms since the epoch (the control API lists it).
    pub connected_at: i64,
    state: Mutex<SessionState>,
}

/// Where a socket is in its life. Only forward: awaiting auth → authenticated → closed (or
/// straight to closed).
#[derive(Debug, Default)]
pub enum Phase {
    /// Connected without a token: it has the grace period to `authenticate`. In no room.
    #[default]
    AwaitingAuth,
    /// Identity verified: in its automatic rooms and in `rooms`.
    Authenticated(Auth),
    /// Disconnected or disconnecting: no room may be added any more.
    Closed,
}

/// An authenticated socket's identity, token expiry and requested rooms.
#[derive(Debug)]
pub struct Auth {
    /// Verified identity.
    pub identity: Identity,
    /// Expiry of the current token, seconds since the Unix epoch.
    pub exp: u64,
    /// When the current token was issued (`iat`, else `nbf`), seconds since the Unix epoch:
    /// what a revocation compares against.
    pub issued_at: Option<u64>,
    /// Rooms joined on request (the automatic rooms are not listed).
    pub rooms: Vec<RoomName>,
}

impl Auth {
    /// Whether the socket should be in `room` of its tenant: an automatic room or one it joined.
    pub fn is_in(&self, room: &RoomName) -> bool {
        self.identity.is_automatic(room) || self.rooms.contains(room)
    }

    /// The tenant-scoped key of `room`.
    pub fn key(&self, room: RoomName) -> RoomKey {
        RoomKey::new(self.identity.tenant.clone(), room)
    }

    /// Keys of every room the socket is in: the automatic ones, then the joined ones.
    pub fn keys(&self) -> Vec<RoomKey> {
        let auto = self.identity.automatic_rooms();
        auto.into_iter()
            .chain(self.rooms.iter().cloned())
            .map(|room| self.key(room))
            .collect()
    }
}

/// The mutable part of a session.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Where the socket is in its life.
    pub phase: Phase,
    /// Join budget: tokens left (see `take_join`).
    pub join_tokens: f32,
    /// When `join_tokens` was last topped up; `None` before the first join.
    pub join_refill: Option<std::time::Instant>,
}

impl SessionState {
    /// The authenticated part, if the socket is authenticated.
    pub fn auth(&self) -> Option<&Auth> {
        match &self.phase {
            Phase::Authenticated(a) => Some(a),
            _ => None,
        }
    }

    /// The authenticated part, mutable.
    pub fn auth_mut(&mut self) -> Option<&mut Auth> {
        match &mut self.phase {
            Phase::Authenticated(a) => Some(a),
            _ => None,
        }
    }

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
    /// A fresh session awaiting authentication.
    pub fn new(transport: &'static str) -> Arc<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            transport,
            connected_at: crate::events::envelope::now_millis(),
            state: Mutex::new(SessionState::default()),
        })
    }

    /// The session's state; held for short, await-free sections only.
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock()
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
        self.state().auth().map(|a| a.identity.clone())
    }
}
