//! Revoked tokens, per user: every token of the user issued before a time is refused.
//!
//! The gateway keeps its own copy for the synchronous checks at the handshake, `authenticate`
//! and `refresh`; the copy is filled from Redis at start (and after the control channel
//! reconnects) and kept current by the control channel, so every gateway honours a revocation
//! within the control channel's delay and after a restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::{AuthError, Identity};
use crate::events::{TenantId, UserId};

/// Revocations in force on this gateway.
#[derive(Default)]
pub struct Revocations {
    /// `(tenant, user)` → (tokens issued before this second are refused, until when).
    map: Mutex<HashMap<(TenantId, UserId), (u64, Instant)>>,
}

impl Revocations {
    /// Refuses the user's tokens issued before `before` (seconds since the epoch) for `ttl`.
    /// A later revocation of the same user wins over an earlier one.
    pub fn insert(&self, tenant: TenantId, user: UserId, before: u64, ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut map = self.map.lock();
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        let entry = map.entry((tenant, user)).or_insert((before, until));
        if before >= entry.0 {
            *entry = (before, until);
        }
    }

    /// The revocation time in force for a user, if any.
    pub fn before(&self, tenant: &TenantId, user: &UserId) -> Option<u64> {
        let map = self.map.lock();
        map.get(&(tenant.clone(), user.clone()))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(before, _)| *before)
    }

    /// Whether a token of `who` issued at `issued_at` (its `iat`, else its `nbf`) is revoked.
    /// A token with neither is refused for a user with a revocation in force: nothing shows it
    /// was issued after it.
    pub fn check(&self, who: &Identity, issued_at: Option<u64>) -> Result<(), AuthError> {
        match (self.before(&who.tenant, &who.user_id), issued_at) {
            (Some(before), Some(at)) if at < before => Err(AuthError::Revoked),
            (Some(_), None) => Err(AuthError::Revoked),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_issued_before_are_refused() {
        let r = Revocations::default();
        let who = Identity {
            user_id: UserId::parse("7").unwrap(),
            tenant: TenantId::parse("1").unwrap(),
            role: "STUDENT".into(),
        };
        assert!(r.check(&who, None).is_ok());
        r.insert(
            who.tenant.clone(),
            who.user_id.clone(),
            100,
            Duration::from_secs(60),
        );
        assert_eq!(r.check(&who, Some(99)), Err(AuthError::Revoked));
        assert_eq!(r.check(&who, None), Err(AuthError::Revoked));
        assert!(r.check(&who, Some(100)).is_ok());
        // An earlier revocation does not shorten a later one.
        r.insert(
            who.tenant.clone(),
            who.user_id.clone(),
            50,
            Duration::from_secs(60),
        );
        assert_eq!(r.check(&who, Some(99)), Err(AuthError::Revoked));
        r.insert(who.tenant.clone(), who.user_id.clone(), 200, Duration::ZERO);
        assert!(
            r.check(&who, Some(99)).is_ok(),
            "expired revocations are forgotten"
        );
    }
}
