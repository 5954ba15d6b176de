//! Publishing straight into Redis from a test, the way a Rust backend would.

use std::sync::Arc;
use std::time::Duration;

use realtime_gateway::{Event, RoomKey, RoomName, TenantId};
use realtime_gateway::{Publisher, RedisSettings};
use serde_json::value::RawValue;

use super::redis_server::RedisServer;

/// A publisher on `redis` with the gateways' default prefix and a generous history.
pub fn publisher(redis: &RedisServer) -> Publisher {
    Publisher::new(Arc::new(RedisSettings {
        url: redis.url(),
        cluster_nodes: Vec::new(),
        prefix: "rtg".into(),
        history_max_len: 10_000,
        history_ttl: Duration::from_secs(3600),
        pool_size: 4,
        timeout: Duration::from_secs(2),
        unsubscribe_delay: Duration::from_secs(1),
    }))
    .unwrap()
}

/// The key of `room` in `tenant`.
pub fn key(tenant: &str, room: &str) -> RoomKey {
    RoomKey::new(
        TenantId::parse(tenant).unwrap(),
        RoomName::parse(room, 128).unwrap(),
    )
}

/// The `n`th `incident_updated` event of tenant 1.
pub fn incident(n: u64) -> Arc<Event> {
    let payload = format!(
        r#"{{"incidentId":{n},"status":"open","severity":"low","updatedBy":1,"updatedByName":"Invigilator","updatedAt":"2026-11-28T10:00:00Z","institutionId":"1"}}"#
    );
    Arc::new(Event {
        id: format!("evt-{n}").into(),
        channel: "incident".into(),
        event: "incident_updated".into(),
        tenant: "1".into(),
        payload: RawValue::from_string(payload).unwrap(),
        timestamp: realtime_gateway::now_millis(),
    })
}
