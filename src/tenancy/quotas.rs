//! Per-tenant quotas: defaults and per-tenant overrides from the tenants file
//! (`GATEWAY_TENANTS_FILE`, JSON or YAML):
//!
//! ```json
//! { "defaults": { "maxConnections": 5000, "publishRate": 500, "maxRoomsPerUser": 50 },
//!   "tenants": { "1": { "maxConnections": 20000 } },
//!   "metricsTenants": ["1"] }
//! ```
//!
//! An absent limit is no limit. `metricsTenants` lists the (few) tenants whose quota metrics
//! carry their own `tenant` label; every other tenant is counted as `other`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::events::TenantId;

/// Most tenants that may get their own metric label.
pub const MAX_METRICS_TENANTS: usize = 50;

/// Limits of one tenant; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Open Socket.IO connections across the fleet.
    pub max_connections: Option<u64>,
    /// Events per second across the fleet and every publish path (one per room).
    pub publish_rate: Option<u64>,
    /// Rooms one socket of a user may join on request.
    pub max_rooms_per_user: Option<usize>,
}

impl Limits {
    /// `self`, with what it leaves unset taken from `defaults`.
    fn or(self, defaults: Limits) -> Limits {
        Limits {
            max_connections: self.max_connections.or(defaults.max_connections),
            publish_rate: self.publish_rate.or(defaults.publish_rate),
            max_rooms_per_user: self.max_rooms_per_user.or(defaults.max_rooms_per_user),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Limits,
    #[serde(default)]
    tenants: HashMap<String, Limits>,
    #[serde(default)]
    metrics_tenants: Vec<serde_json::Value>,
}

/// Quotas of every tenant.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    defaults: Limits,
    tenants: HashMap<TenantId, Limits>,
    metrics_tenants: HashSet<TenantId>,
}

impl Quotas {
    /// The quotas in the tenants file at `path`; none without a file.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    /// Parses a tenants file (JSON, or YAML).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("not a valid JSON tenants file: {e}"))?
        } else {
            serde_yaml::from_str(text).map_err(|e| format!("not a valid YAML tenants file: {e}"))?
        };
        let mut tenants = HashMap::new();
        for (id, limits) in file.tenants {
            let id = TenantId::parse(&id).map_err(|e| format!("tenants.{id}: {e}"))?;
            tenants.insert(id, limits);
        }
        if file.metrics_tenants.len() > MAX_METRICS_TENANTS {
            return Err(format!(
                "metricsTenants lists {} tenants; at most {MAX_METRICS_TENANTS} may get their own label",
                file.metrics_tenants.len()
            ));
        }
        let metrics_tenants = file
            .metrics_tenants
            .iter()
            .map(TenantId::from_json)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("metricsTenants: {e}"))?;
        Ok(Self {
            defaults: file.defaults,
            tenants,
            metrics_tenants,
        })
    }

    /// The limits of `tenant`.
    pub fn of(&self, tenant: &TenantId) -> Limits {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or_default()
            .or(self.defaults)
    }

    /// The default publish rate and every tenant's own, for the Redis function.
    pub fn publish_rates(&self) -> (Option<u64>, Vec<(TenantId, u64)>) {
        let own = self
            .tenants
            .iter()
            .filter_map(|(t, l)| {
                l.publish_rate
                    .or(self.defaults.publish_rate)
                    .map(|r| (t.clone(), r))
            })
            .collect();
        (self.defaults.publish_rate, own)
    }

    /// The `tenant` label of a quota metric: the tenant if listed in `metricsTenants`, else `other`.
    pub fn metric_label(&self, tenant: &TenantId) -> String {
        if self.metrics_tenants.contains(tenant) {
            tenant.to_string()
        } else {
            "other".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_fall_back_to_defaults() {
        let q = Quotas::parse(
            r#"{"defaults":{"maxConnections":10,"publishRate":5},
                "tenants":{"1":{"maxConnections":3}},"metricsTenants":[1]}"#,
        )
        .unwrap();
        let one = q.of(&TenantId::parse("1").unwrap());
        assert_eq!((one.max_connections, one.publish_rate), (Some(3), Some(5)));
        let two = q.of(&TenantId::parse("2").unwrap());
        assert_eq!(
            (two.max_connections, two.max_rooms_per_user),
            (Some(10), None)
        );
        assert_eq!(q.metric_label(&TenantId::parse("1").unwrap()), "1");
        assert_eq!(q.metric_label(&TenantId::parse("2").unwrap()), "other");
        let yaml = Quotas::parse("defaults:\n  publishRate: 7\n").unwrap();
        assert_eq!(
            yaml.of(&TenantId::parse("9").unwrap()).publish_rate,
            Some(7)
        );
        assert!(Quotas::parse(r#"{"defaults":{"maxConns":1}}"#).is_err());
    }
}
