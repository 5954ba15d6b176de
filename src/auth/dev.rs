//! Development tokens: HS256 tokens signed with the gateway's own secret, for the `token`
//! command and for `GET /dev/token` under `--dev`. Production tokens come from an identity
//! service; nothing here is reachable without `--dev` or the secret.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::ClaimNames;
use crate::events::envelope::now_millis;

/// Signs development tokens with an HS256 secret, using the configured claim names.
#[derive(Clone)]
pub struct DevTokens {
    key: EncodingKey,
    claims: ClaimNames,
}

impl fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: never in a log line or a panic message.
        f.debug_struct("DevTokens")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// A signed token and its expiry (seconds since the Unix epoch).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevToken {
    /// The JWT.
    pub token: String,
    /// Its `exp` claim.
    pub exp: u64,
}

impl DevTokens {
    /// Tokens signed with `secret`, carrying identity in the `claims` names.
    pub fn new(secret: &str, claims: ClaimNames) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            claims,
        }
    }

    /// A token for user `sub` of tenant `tenant` with `role`, valid for `ttl` from now. Ids
    /// that are integers are written as JSON numbers, as identity services usually do.
    pub fn mint(
        &self,
        sub: &str,
        tenant: &str,
        role: &str,
        ttl: Duration,
    ) -> anyhow::Result<DevToken> {
        let now = (now_millis() / 1000) as u64;
        let id = |s: &str| {
            s.parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(s))
        };
        let exp = now.saturating_add(ttl.as_secs());
        let mut claims = serde_json::Map::new();
        claims.insert(self.claims.user.clone(), id(sub));
        claims.insert(self.claims.tenant.clone(), id(tenant));
        claims.insert(self.claims.role.clone(), json!(role));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        let token = encode(&Header::default(), &claims, &self.key)?;
        Ok(DevToken { token, exp })
    }
}
