//! Token verification: a JWT in, a verified [`Identity`] or a stable error code out.

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Serialize;

use crate::events::{RoomName, TenantId, UserId};

/// Who a socket is, taken from verified claims only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The user (claim `sub` by default).
    pub user_id: UserId,
    /// The tenant (claim `institutionId` by default).
    #[serde(rename = "institutionId")]
    pub tenant: TenantId,
    /// The role (claim `role` by default), as issued.
    pub role: String,
}

impl Identity {
    /// The rooms a socket of this identity is in from authentication until it disconnects:
    /// its tenant's room and its own user room. The one place they are named.
    pub fn automatic_rooms(&self) -> [RoomName; 2] {
        [
            RoomName::institution(&self.tenant),
            RoomName::user(&self.user_id),
        ]
    }

    /// Whether `room` is one of the [automatic rooms](Identity::automatic_rooms).
    pub fn is_automatic(&self, room: &RoomName) -> bool {
        self.automatic_rooms().contains(room)
    }
}

/// A verified token: the identity and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who the token speaks for.
    pub identity: Identity,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// When the token was issued (`iat`, else `nbf`), seconds since the Unix epoch; what a
    /// revocation compares against.
    pub issued_at: Option<u64>,
}

/// Why a token was refused. [`AuthError::code`] is what clients see in `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given where one is needed.
    #[error("no token given: pass auth: {{ token }} or emit authenticate {{ token }}")]
    Missing,
    /// Not a JWT at all (wrong number of parts, bad base64, bad JSON).
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg: none`, or an algorithm other than the one configured.
    #[error("the token's algorithm is not accepted: {0}")]
    AlgorithmNotAllowed(String),
    /// The signature does not match.
    #[error("the token's signature is invalid")]
    InvalidSignature,
    /// `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A required claim is absent.
    #[error("the token has no {0} claim")]
    ClaimMissing(String),
    /// A claim is present but unusable (wrong type, bad characters).
    #[error("the token's {0} claim is invalid: {1}")]
    ClaimInvalid(String, String),
    /// Issuer or audience do not match the configured ones.
    #[error("the token's issuer or audience is not accepted")]
    WrongIssuerOrAudience,
    /// `refresh` on a socket that never authenticated.
    #[error("this socket is not authenticated; authenticate first")]
    NotAuthenticated,
    /// A `refresh` token that belongs to another user or tenant.
    #[error("the new token is for another user or tenant")]
    IdentityChanged,
    /// The user's tokens issued before a time were revoked, and this is one of them.
    #[error("this token was revoked; sign in again to get a new one")]
    Revoked,
}

impl AuthError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::AlgorithmNotAllowed(_) => "token_algorithm_not_allowed",
            AuthError::InvalidSignature => "token_invalid_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::ClaimMissing(_) => "token_claim_missing",
            AuthError::ClaimInvalid(..) => "token_claim_invalid",
            AuthError::WrongIssuerOrAudience => "token_wrong_issuer_or_audience",
            AuthError::NotAuthenticated => "not_authenticated",
            AuthError::IdentityChanged => "token_identity_changed",
            AuthError::Revoked => "token_revoked",
        }
    }
}

/// Names of the claims that carry the identity.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    /// User id claim (default `sub`).
    pub user: String,
    /// Tenant id claim (default `institutionId`).
    pub tenant: String,
    /// Role claim (default `role`).
    pub role: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            user: "sub".into(),
            tenant: "institutionId".into(),
            role: "role".into(),
        }
    }
}

/// Verifies tokens with one key and one algorithm.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    claims: ClaimNames,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `algorithm` with `key`; `leeway_secs` applies to `exp` and `nbf`.
    pub fn new(
        key: DecodingKey,
        algorithm: Algorithm,
        claims: ClaimNames,
        leeway_secs: u64,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Self {
            key,
            validation,
            claims,
        }
    }

    /// Verifies `token` and extracts the identity from its claims.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        self.check_header(token)?;
        let data = decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::InvalidSignature,
            ErrorKind::InvalidAlgorithm => {
                AuthError::AlgorithmNotAllowed("algorithm mismatch".into())
            }
            ErrorKind::MissingRequiredClaim(c) => AuthError::ClaimMissing(c.clone()),
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                AuthError::WrongIssuerOrAudience
            }
            _ => AuthError::Malformed,
        })?;
        let claims = data.claims;
        let get = |name: &str| {
            claims
                .get(name)
                .ok_or_else(|| AuthError::ClaimMissing(name.to_string()))
        };
        let exp = claims.get("exp").and_then(|v| v.as_u64()).ok_or_else(|| {
            AuthError::ClaimInvalid("exp".into(), "must be a number of seconds".into())
        })?;
        let user_id = UserId::from_json(get(&self.claims.user)?)
            .map_err(|e| AuthError::ClaimInvalid(self.claims.user.clone(), e.0))?;
        let tenant = TenantId::from_json(get(&self.claims.tenant)?)
            .map_err(|e| AuthError::ClaimInvalid(self.claims.tenant.clone(), e.0))?;
        let role = get(&self.claims.role)?
            .as_str()
            .filter(|r| !r.is_empty() && r.len() <= 64)
            .ok_or_else(|| {
                AuthError::ClaimInvalid(
                    self.claims.role.clone(),
                    "must be a non-empty string".into(),
                )
            })?
            .to_string();
        let issued_at = ["iat", "nbf"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_u64()));
        Ok(Verified {
            identity: Identity {
                user_id,
                tenant,
                role,
            },
            exp,
            issued_at,
        })
    }

    /// Reads the header ourselves so that `alg: none` (which the JWT library cannot even parse)
    /// gets its own clear code instead of "malformed".
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed)?;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or(AuthError::Malformed)?;
        let allowed = alg.parse::<Algorithm>();
        if !allowed.is_ok_and(|a| self.validation.algorithms.contains(&a)) {
            return Err(AuthError::AlgorithmNotAllowed(format!(
                "{alg} is not accepted"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn verifier() -> Verifier {
        Verifier::new(
            DecodingKey::from_secret(SECRET),
            Algorithm::HS256,
            ClaimNames::default(),
            0,
            None,
            None,
        )
    }

    fn now() -> u64 {
        crate::events::envelope::now_millis() as u64 / 1000
    }

    fn sign(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_gives_identity() {
        let t = sign(
            json!({"sub": 10, "institutionId": "1", "role": "ADMIN", "exp": now() + 60}),
            SECRET,
        );
        let v = verifier().verify(&t).unwrap();
        assert_eq!(v.identity.user_id.as_str(), "10");
        assert_eq!(v.identity.tenant.as_str(), "1");
        assert_eq!(v.identity.role, "ADMIN");
    }

    #[test]
    fn each_failure_has_its_code() {
        let v = verifier();
        let good = json!({"sub": 10, "institutionId": 1, "role": "ADMIN", "exp": now() + 60});
        let code = |t: &str| v.verify(t).unwrap_err().code();
        assert_eq!(code("abc"), "token_malformed");
        assert_eq!(
            code(&sign(good.clone(), b"other")),
            "token_invalid_signature"
        );
        let mut c = good.clone();
        c["exp"] = json!(now() - 10);
        assert_eq!(code(&sign(c, SECRET)), "token_expired");
        let mut c = good.clone();
        c["nbf"] = json!(now() + 600);
        assert_eq!(code(&sign(c, SECRET)), "token_not_yet_valid");
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("institutionId");
        assert_eq!(code(&sign(c, SECRET)), "token_claim_missing");
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(code(&sign(c, SECRET)), "token_claim_missing");
        let mut c = good.clone();
        c["sub"] = json!(1.5);
        assert_eq!(code(&sign(c, SECRET)), "token_claim_invalid");
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&good.to_string())
        );
        assert_eq!(code(&none), "token_algorithm_not_allowed");
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(code(&hs512), "token_algorithm_not_allowed");
    }
}
