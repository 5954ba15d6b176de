//! Flags and environment variables of presence and the lifecycle stream, validated into a
//! [`PresenceConfig`].

use std::collections::HashSet;
use std::time::Duration;

use clap::Args;

use super::{bad, list, parse_duration, positive, ConfigError};
use crate::events::ids::{INSTITUTION_KIND, USER_KIND};
use crate::events::RoomName;
use crate::presence::PresenceConfig;

/// Flags and environment variables of presence and the lifecycle stream.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Room kinds whose members are tracked, comma separated (`institution`: counts only;
    /// empty: presence off).
    #[arg(
        long,
        env = "GATEWAY_PRESENCE_KINDS",
        default_value = "exam,batch,incident"
    )]
    pub presence_kinds: String,
    /// Room kinds whose members get `presence_join` / `presence_leave` events, comma separated
    /// (each must be in GATEWAY_PRESENCE_KINDS).
    #[arg(long, env = "GATEWAY_PRESENCE_EVENTS", default_value = "")]
    pub presence_events: String,
    /// Largest room whose members a presence answer lists; bigger rooms answer with the count.
    #[arg(long, env = "GATEWAY_PRESENCE_MAX_MEMBERS", default_value_t = 1000)]
    pub presence_max_members: usize,
    /// How long a gateway's presence entries outlive it (Redis): each gateway renews its lease
    /// three times per period; when it stops, the others remove its members after this long.
    #[arg(long, env = "GATEWAY_PRESENCE_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub presence_lease: Duration,
    /// Write connect, authenticate, join, leave and disconnect entries to the per-tenant
    /// stream `<prefix>:{<tenant>}:lifecycle` (`on` or `off`; needs REDIS_URL).
    #[arg(long, env = "GATEWAY_LIFECYCLE", default_value = "off", value_parser = on_off, action = clap::ArgAction::Set)]
    pub lifecycle: bool,
    /// Approximate cap on the entries of each tenant's lifecycle stream.
    #[arg(long, env = "GATEWAY_LIFECYCLE_MAX_LEN", default_value_t = 100_000, value_parser = positive::<u64>)]
    pub lifecycle_max_len: u64,
    /// This gateway's name in lifecycle entries and leases (default: the host name).
    #[arg(long, env = "GATEWAY_NAME")]
    pub gateway_name: Option<String>,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" | "" => Ok(false),
        other => Err(format!("'{other}' is neither on nor off")),
    }
}

fn kinds(setting: &'static str, kinds: &str) -> Result<HashSet<String>, ConfigError> {
    list(kinds)
        .map(|k| match RoomName::parse(&format!("{k}:x"), usize::MAX) {
            Ok(_) if k != USER_KIND => Ok(k.to_string()),
            _ => Err(bad(
                setting,
                format!("'{k}' is not a room kind presence can track (a-z and '_'; not user)"),
            )),
        })
        .collect()
}

/// A name usable inside Redis keys: the host name (its usable characters), or `gateway`.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default();
    let name: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    match name.is_empty() {
        true => "gateway".into(),
        false => name,
    }
}

impl PresenceArgs {
    /// Validates the settings; `redis` says whether the gateway runs on Redis.
    pub fn into_config(self, redis: bool) -> Result<PresenceConfig, ConfigError> {
        let kinds_set = kinds(
            "--presence-kinds / GATEWAY_PRESENCE_KINDS",
            &self.presence_kinds,
        )?;
        let events = kinds(
            "--presence-events / GATEWAY_PRESENCE_EVENTS",
            &self.presence_events,
        )?;
        if let Some(k) = events
            .iter()
            .find(|k| !kinds_set.contains(*k) || *k == INSTITUTION_KIND)
        {
            return Err(bad(
                "--presence-events / GATEWAY_PRESENCE_EVENTS",
                format!("'{k}' must also be in GATEWAY_PRESENCE_KINDS, and institution presence is counts only"),
            ));
        }
        if self.presence_max_members == 0 {
            return Err(bad(
                "--presence-max-members / GATEWAY_PRESENCE_MAX_MEMBERS",
                "must be at least 1",
            ));
        }
        if self.presence_lease < Duration::from_millis(300) {
            return Err(bad(
                "--presence-lease / GATEWAY_PRESENCE_LEASE",
                "must be at least 300ms (it is renewed three times per period)",
            ));
        }
        if self.lifecycle && !redis {
            return Err(bad(
                "--lifecycle / GATEWAY_LIFECYCLE",
                "the lifecycle stream lives in Redis: set REDIS_URL too",
            ));
        }
        let gateway_name = match self.gateway_name.filter(|n| !n.trim().is_empty()) {
            Some(n) => {
                let ok = n.len() <= 64
                    && n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(bad(
                        "--gateway-name / GATEWAY_NAME",
                        "must be 1-64 letters, digits, '.', '_' or '-'",
                    ));
                }
                n
            }
            None => default_name(),
        };
        Ok(PresenceConfig {
            kinds: kinds_set,
            events,
            max_members: self.presence_max_members,
            lease: self.presence_lease,
            lifecycle: self.lifecycle,
            lifecycle_max_len: self.lifecycle_max_len,
            gateway_name,
        })
    }
}
