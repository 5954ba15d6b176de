//! API keys with names, tenants and scopes.
//!
//! Two sources: `PUBLISH_API_KEYS` (each key may publish and read presence in every tenant, as
//! before) and the keys file `GATEWAY_API_KEYS_FILE`, a JSON array (or YAML list) of
//! `{ key | sha256, name, tenants: [..] | "*", scopes: [publish, presence, control] }`.
//! Only a key's SHA-256 digest is kept in memory; only its name is ever logged or counted.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::events::TenantId;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/publish` and `/v1/publish/batch`.
    Publish,
    /// Presence reads.
    Presence,
    /// The control API: list, disconnect, revoke, force leave.
    Control,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Publish => 1,
            Scope::Presence => 2,
            Scope::Control => 4,
        }
    }

    /// The scope's name in the keys file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Presence => "presence",
            Scope::Control => "control",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Scope::Publish, Scope::Presence, Scope::Control]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// The tenants a key may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// Every tenant (`"*"`).
    All,
    /// Only these.
    Only(HashSet<TenantId>),
}

/// Who presented a valid key: its name, tenants and scopes (never the key itself).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, for logs, audit lines and rate limits.
    pub name: Arc<str>,
    /// Tenants it may act in.
    pub tenants: Tenants,
    scopes: u8,
}

impl Caller {
    /// Whether the key has `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// Whether the key may act in `tenant`.
    pub fn has_tenant(&self, tenant: &TenantId) -> bool {
        match &self.tenants {
            Tenants::All => true,
            Tenants::Only(set) => set.contains(tenant),
        }
    }
}

/// A configured key: its digest and what it may do.
#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// The keys a gateway accepts. Replaced as a whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<Entry>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Shortest plain key accepted (as for `PUBLISH_API_KEYS`).
pub const MIN_KEY_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    key: Option<String>,
    sha256: Option<String>,
    name: String,
    tenants: serde_json::Value,
    scopes: Vec<String>,
}

impl Keyring {
    /// Keys of `PUBLISH_API_KEYS`: every tenant, scopes `publish` and `presence`; named
    /// `PUBLISH_API_KEYS[i]`.
    pub fn from_publish_keys(keys: &[String]) -> Self {
        let entries = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Entry {
                digest: sha256(k.as_bytes()),
                caller: Caller {
                    name: Arc::from(format!("PUBLISH_API_KEYS[{i}]")),
                    tenants: Tenants::All,
                    scopes: Scope::Publish.bit() | Scope::Presence.bit(),
                },
            })
            .collect();
        Self { entries }
    }

    /// `PUBLISH_API_KEYS` plus the keys file at `path`, if any. The error says what is wrong
    /// with the file (never a key).
    pub fn load(publish_keys: &[String], path: Option<&Path>) -> Result<Self, String> {
        let mut ring = Self::from_publish_keys(publish_keys);
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            ring.entries.extend(parse_file(&text)?);
        }
        Ok(ring)
    }

    /// Whether no key is configured (the key-protected API is off).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The key `presented` matches, compared in constant time against every key so timing
    /// reveals neither a key nor its position.
    pub fn find(&self, presented: &str) -> Option<&Caller> {
        let digest = sha256(presented.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        let mut index = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.digest.ct_eq(&digest);
            ok |= eq;
            index = u64::conditional_select(&index, &(i as u64), eq);
        }
        bool::from(ok).then(|| &self.entries[index as usize].caller)
    }
}

/// A parser's message without the values it quotes (one of them could be a key).
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    quote = Some(c);
                }
            }
        }
    }
    out
}

/// Parses a keys file: a JSON array, or the same as a YAML list.
fn parse_file(text: &str) -> Result<Vec<Entry>, String> {
    let raw: Vec<FileEntry> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text)
            .map_err(|e| format!("not a valid JSON array of keys: {}", redact(&e.to_string())))?
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| format!("not a valid YAML list of keys: {}", redact(&e.to_string())))?
    };
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, e) in raw.into_iter().enumerate() {
        let at = |m: String| format!("entry [{i}]: {m}");
        if e.name.trim().is_empty() || e.name.len() > 64 {
            return Err(at("name must be 1-64 characters".into()));
        }
        if !names.insert(e.name.clone()) {
            return Err(at(format!("name {:?} is used twice", e.name)));
        }
        let digest = match (&e.key, &e.sha256) {
            (Some(k), None) if k.len() >= MIN_KEY_LEN => sha256(k.as_bytes()),
            (Some(_), None) => {
                return Err(at(format!(
                    "key of {:?} is too short; use at least {MIN_KEY_LEN} characters",
                    e.name
                )))
            }
            (None, Some(h)) => {
                let bytes = hex::decode(h.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| at("sha256 must be 64 hex digits".into()))?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes);
                d
            }
            _ => return Err(at("give exactly one of key and sha256".into())),
        };
        if !digests.insert(digest) {
            return Err(at("the same key is listed twice".into()));
        }
        let tenants = match &e.tenants {
            serde_json::Value::String(s) if s == "*" => Tenants::All,
            serde_json::Value::Array(items) if !items.is_empty() => Tenants::Only(
                items
                    .iter()
                    .map(TenantId::from_json)
                    .collect::<Result<_, _>>()
                    .map_err(|x| at(format!("tenants: {x}")))?,
            ),
            _ => {
                return Err(at(
                    "tenants must be \"*\" or a non-empty list of tenant ids".into(),
                ))
            }
        };
        let mut scopes = 0u8;
        for s in &e.scopes {
            let scope = Scope::parse(s).ok_or_else(|| {
                at(format!(
                    "unknown scope {s:?}; scopes are publish, presence and control"
                ))
            })?;
            scopes |= scope.bit();
        }
        if scopes == 0 {
            return Err(at("scopes must list at least one scope".into()));
        }
        out.push(Entry {
            digest,
            caller: Caller {
                name: Arc::from(e.name),
                tenants,
                scopes,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_files_give_the_same_keys() {
        let hash = hex::encode(sha256(b"hashed-key-0123456789"));
        let json = format!(
            r#"[{{"key":"plain-key-0123456789","name":"a","tenants":[1,"2"],"scopes":["publish"]}},
               {{"sha256":"{hash}","name":"b","tenants":"*","scopes":["control","presence"]}}]"#
        );
        let yaml = format!(
            "- key: plain-key-0123456789\n  name: a\n  tenants: [1, \"2\"]\n  scopes: [publish]\n\
             - sha256: {hash}\n  name: b\n  tenants: \"*\"\n  scopes: [control, presence]\n"
        );
        for text in [json, yaml] {
            let ring = Keyring {
                entries: parse_file(&text).unwrap(),
            };
            let a = ring.find("plain-key-0123456789").unwrap();
            assert_eq!(&*a.name, "a");
            assert!(a.has_scope(Scope::Publish) && !a.has_scope(Scope::Control));
            assert!(a.has_tenant(&TenantId::parse("1").unwrap()));
            assert!(!a.has_tenant(&TenantId::parse("3").unwrap()));
            let b = ring.find("hashed-key-0123456789").unwrap();
            assert!(b.has_scope(Scope::Control) && !b.has_scope(Scope::Publish));
            assert!(b.has_tenant(&TenantId::parse("99").unwrap()));
            assert!(ring.find("unknown-key-0123456789").is_none());
        }
    }

    #[test]
    fn bad_files_say_what_is_wrong_without_the_key() {
        let err = |t: &str| parse_file(t).unwrap_err();
        assert!(err("{").contains("YAML"));
        let e = err(r#"[{"key":"short-secret","name":"x","tenants":"*","scopes":["publish"]}]"#);
        assert!(
            e.contains("too short") && !e.contains("short-secret"),
            "{e}"
        );
        let e =
            err(r#"[{"key":"plain-key-0123456789","name":"x","tenants":"*","scopes":["admin"]}]"#);
        assert!(e.contains("unknown scope"), "{e}");
        let e =
            err(r#"[{"key":"plain-key-0123456789","name":"x","tenants":[],"scopes":["publish"]}]"#);
        assert!(e.contains("tenants"), "{e}");
        let e = err(
            r#"[{"key":12345678901234567890123,"name":"x","tenants":"*","scopes":["publish"]}]"#,
        );
        assert!(!e.contains("12345678901234567890123"), "{e}");
        let e = err("- key: [\"secret-in-a-list-0123456789\"]\n  name: x\n  tenants: \"*\"\n  scopes: [publish]\n");
        assert!(!e.contains("secret-in-a-list"), "{e}");
    }
}
