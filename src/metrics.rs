//! Every metric the gateway exports: names, help texts and label sets, in one place.
//!
//! Labels only ever take values from bounded sets (a transport, a reason code, a catalog
//! channel or `other`), never a room, a user or a raw path.

use std::sync::{OnceLock, PoisonError, RwLock};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::events::catalog::Catalog;

/// Open Socket.IO connections (gauge), by `transport`.
pub const CONNECTIONS: &str = "gateway_connections";
/// Connections accepted (counter), by `transport`.
pub const CONNECTIONS_TOTAL: &str = "gateway_connections_total";
/// Disconnects (counter), by `reason`.
pub const DISCONNECTS: &str = "gateway_disconnects_total";
/// Refused authentications (counter), by `reason` (the error code).
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
/// Rooms with at least one local socket (gauge).
pub const ROOMS: &str = "gateway_rooms";
/// Refused joins (counter), by `reason`.
pub const JOIN_REFUSED: &str = "gateway_join_refused_total";
/// Events received from the bus (counter), by `channel`.
pub const EVENTS_RECEIVED: &str = "gateway_events_received_total";
/// Event copies handed to sockets (counter), by `channel`.
pub const EVENTS_DELIVERED: &str = "gateway_events_delivered_total";
/// Event copies a socket could not take (counter), by `reason` (`buffer_full`, `closed`).
pub const DELIVERY_FAILURES: &str = "gateway_delivery_failures_total";
/// Time from the event's timestamp to its hand-off to sockets (histogram, seconds).
pub const DELIVERY_LAG: &str = "gateway_delivery_lag_seconds";
/// Invalid messages on the bus (counter), by `reason`.
pub const BUS_INVALID: &str = "gateway_bus_invalid_total";
/// Publish API requests (counter), by `result` (`ok` or an error code).
pub const PUBLISH_REQUESTS: &str = "gateway_publish_requests_total";
/// Events published (counter), by `channel`.
pub const EVENTS_PUBLISHED: &str = "gateway_events_published_total";
/// 1 while the bus is usable, else 0 (gauge).
pub const BUS_UP: &str = "gateway_bus_up";
/// 1 while the gateway is ready for new clients, else 0 (gauge).
pub const READY: &str = "gateway_ready";

/// 1 while the Redis subscription connection is up, else 0 (gauge).
pub const REDIS_UP: &str = "gateway_redis_up";
/// Reconnect attempts of the Redis subscriber (counter).
pub const REDIS_RECONNECTS: &str = "gateway_redis_reconnects_total";
/// Redis channels this gateway is subscribed to (gauge).
pub const REDIS_SUBSCRIPTIONS: &str = "gateway_redis_subscriptions";
/// Time of one publish call to Redis, all rooms (histogram, seconds).
pub const REDIS_PUBLISH_DURATION: &str = "gateway_redis_publish_duration_seconds";
/// Time spent waiting for a pooled Redis connection (histogram, seconds).
pub const REDIS_POOL_WAIT: &str = "gateway_redis_pool_wait_duration_seconds";
/// Bus messages dropped because their offset was already relayed (counter).
pub const BUS_DUPLICATES: &str = "gateway_bus_duplicates_total";

/// Recoveries requested by clients (counter), by `result` (`recovered` or why not).
pub const RECOVERIES: &str = "gateway_recoveries_total";
/// Events replayed to clients from history (counter).
pub const EVENTS_REPLAYED: &str = "gateway_events_replayed_total";
/// Rooms told to resync because their history was lost (counter).
pub const RESYNCS: &str = "gateway_resyncs_total";
/// History reads after a Redis reconnect (counter), by `result`.
pub const GAP_READS: &str = "gateway_gap_reads_total";
/// Sockets cut because their outgoing buffer was full (counter), by `transport`.
pub const SLOW_CONSUMERS: &str = "gateway_slow_consumer_disconnects_total";
/// WebSockets opened to upgrade a long-polling session (counter), by `result`: `upgraded`,
/// `timeout` (no upgrade within 10 s) or `refused` (the probe went wrong; the log says how).
pub const UPGRADES: &str = "gateway_upgrades_total";
/// Connections refused because the gateway held GATEWAY_MAX_CONNECTIONS already (counter).
pub const CONNECTIONS_REFUSED: &str = "gateway_connections_refused_total";
/// Failed accepts, e.g. out of file descriptors (counter).
pub const ACCEPT_ERRORS: &str = "gateway_accept_errors_total";
/// Client protocol errors (bad frames or packets, refused handshakes, unknown events) by reason (counter).
pub const CLIENT_PROTOCOL_ERRORS: &str = "gateway_client_protocol_errors_total";
/// Tenant quota checks (counter), by `quota` (`connections`, `publish_rate`), `outcome`
/// (`allowed`, `refused`) and `tenant` (`other` unless listed in the tenants file's
/// `metricsTenants`).
pub const TENANT_QUOTA: &str = "gateway_tenant_quota_total";
/// Control API calls (counter), by `action` and `result` (`ok` or an error code).
pub const CONTROL_REQUESTS: &str = "gateway_control_requests_total";
/// API requests refused by the key check (counter), by `reason`.
pub const API_KEY_REFUSALS: &str = "gateway_api_key_refusals_total";
/// Connections closed by a drain (counter).
pub const DRAINED: &str = "gateway_drained_connections_total";

/// (Room, user) pairs with a socket on this gateway in rooms with presence (gauge).
pub const PRESENCE_MEMBERS: &str = "gateway_presence_members";
/// Rooms with presence that have a socket on this gateway (gauge).
pub const PRESENCE_ROOMS: &str = "gateway_presence_rooms";
/// Batches of presence writes (counter), by `result` (`ok`, `lapsed`, `error`).
pub const PRESENCE_WRITES: &str = "gateway_presence_writes_total";
/// Time to answer a presence question from the store (histogram, seconds).
pub const PRESENCE_READ_DURATION: &str = "gateway_presence_read_duration_seconds";
/// Refused or failed presence requests (counter), by `reason` (the error code).
pub const PRESENCE_REFUSED: &str = "gateway_presence_refused_total";
/// Members of lost gateways this gateway removed (counter).
pub const PRESENCE_REAPED: &str = "gateway_presence_reaped_members_total";
/// Renewals of this gateway's lease (counter), by `result` (`ok`, `lapsed`, `error`).
pub const LEASE_RENEWALS: &str = "gateway_presence_lease_renewals_total";
/// Gateways whose lease expired, reaped by this gateway (counter): a gateway vanished.
pub const LEASE_EXPIRIES: &str = "gateway_presence_lease_expiries_total";
/// Lifecycle stream entries written (counter), `gateway_lost` ones included.
pub const LIFECYCLE_ENTRIES: &str = "gateway_lifecycle_entries_total";
/// Lifecycle entries dropped (counter), by `reason` (`queue_full`, `bus_unavailable`).
pub const LIFECYCLE_DROPPED: &str = "gateway_lifecycle_dropped_total";

/// Channel names a label may take: those of every catalog a gateway of this process serves.
/// The recorder is process-wide, so its label set is too; it is bounded by those catalogs.
static CHANNEL_LABELS: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// Lets the channels of `catalog` appear as `channel` labels (called once per gateway start).
pub fn allow_channel_labels(catalog: &Catalog) {
    let mut names = CHANNEL_LABELS
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    for channel in catalog.channels() {
        if !names.contains(&channel.name()) {
            // Leaked once per distinct name in the process's catalogs: labels must be 'static.
            let name: &'static str = Box::leak(channel.name().to_owned().into_boxed_str());
            names.push(name);
            register_channel(name);
        }
    }
}

/// Exports a channel's event counters at 0, so they exist from the first scrape.
fn register_channel(channel: &'static str) {
    for c in [EVENTS_RECEIVED, EVENTS_DELIVERED, EVENTS_PUBLISHED] {
        metrics::counter!(c, "channel" => channel).absolute(0);
    }
}

/// Label value for a channel: its name if it is in a served catalog, else `other` (an event
/// relayed from a gateway that runs another catalog).
pub fn channel_label(channel: &str) -> &'static str {
    let names = CHANNEL_LABELS
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names
        .iter()
        .find(|n| **n == channel)
        .copied()
        .unwrap_or("other")
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(DELIVERY_LAG.to_string()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_duration_seconds".to_string()),
                        &[
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                        ],
                    )
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed already; this one then records nothing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; gateway metrics go to it"
                );
            }
            describe();
            register_known();
            handle
        })
        .clone()
}

/// Transports, as labelled.
const TRANSPORTS: [&str; 2] = ["websocket", "polling"];

/// Label values known in advance, per labelled metric: exported at 0 from the first scrape so
/// dashboards show 0 rather than "No data" and `rate()` and alerts have a series to work on.
#[rustfmt::skip]
const KNOWN: &[(&str, &str, &str)] = &[
    (DISCONNECTS, "reason", "transport_close transport_error client_disconnect server_disconnect \
        server_closing heartbeat_timeout multiple_polling bad_packet"),
    (AUTH_FAILURES, "reason", "token_missing token_malformed token_algorithm_not_allowed \
        token_invalid_signature token_expired token_not_yet_valid token_claim_missing \
        token_claim_invalid token_wrong_issuer_or_audience token_identity_changed \
        not_authenticated auth_timeout token_revoked session_revoked tenant_connection_limit"),
    (JOIN_REFUSED, "reason", "invalid_request invalid_room invalid_since not_authenticated \
        forbidden_room room_kind_not_allowed forbidden_role too_many_rooms"),
    (DELIVERY_FAILURES, "reason", "buffer_full closed encode"),
    (BUS_INVALID, "reason", "bad_frame bad_envelope tenant_mismatch unknown_channel unknown_room \
        bad_control"),
    (PUBLISH_REQUESTS, "result", "ok invalid_json invalid_body missing_field invalid_field \
        unknown_field unknown_channel unknown_event invalid_payload invalid_room tenant_mismatch \
        too_many_rooms missing_api_key invalid_api_key publish_disabled payload_too_large \
        body_too_large batch_too_large unsupported_media_type bus_rejected \
        bus_unavailable scope_not_allowed tenant_not_allowed tenant_rate_limited"),
    (RECOVERIES, "result", "recovered epoch_changed future_offset too_old too_many invalid_since \
        buffer_overflow bus_unavailable"),
    (CLIENT_PROTOCOL_ERRORS, "reason", "unknown_event event_before_connect"),
    (API_KEY_REFUSALS, "reason", "missing invalid scope tenant"),
    (PRESENCE_WRITES, "result", "ok lapsed error"),
    (PRESENCE_REFUSED, "reason", "invalid_request invalid_room invalid_field not_authenticated \
        room_kind_not_allowed presence_not_enabled forbidden_room presence_unavailable \
        missing_api_key invalid_api_key publish_disabled scope_not_allowed tenant_not_allowed"),
];

/// Exports every counter and gauge whose label values are known in advance, at 0, and
/// registers the histograms, so that a gateway that has seen no traffic yet shows them all.
fn register_known() {
    for c in [
        EVENTS_REPLAYED,
        RESYNCS,
        CONNECTIONS_REFUSED,
        ACCEPT_ERRORS,
        DRAINED,
        BUS_DUPLICATES,
    ] {
        metrics::counter!(c).absolute(0);
    }
    for g in [ROOMS, BUS_UP, READY, PRESENCE_MEMBERS, PRESENCE_ROOMS] {
        metrics::gauge!(g).set(0.0);
    }
    for t in TRANSPORTS {
        metrics::gauge!(CONNECTIONS, "transport" => t).set(0.0);
        metrics::counter!(CONNECTIONS_TOTAL, "transport" => t).absolute(0);
        metrics::counter!(SLOW_CONSUMERS, "transport" => t).absolute(0);
    }
    for result in ["upgraded", "timeout", "refused"] {
        metrics::counter!(UPGRADES, "result" => result).absolute(0);
    }
    // The catalog's channels are registered as they are allowed (`allow_channel_labels`).
    register_channel("other");
    for (name, label, values) in KNOWN {
        for v in values.split_whitespace() {
            metrics::counter!(*name, *label => v).absolute(0);
        }
    }
    for action in ["list", "disconnect", "revoke", "leave"] {
        metrics::counter!(CONTROL_REQUESTS, "action" => action, "result" => "ok").absolute(0);
    }
    // Tenants get a label of their own only when the tenants file lists them.
    for quota in ["connections", "publish_rate"] {
        for outcome in ["allowed", "refused"] {
            metrics::counter!(TENANT_QUOTA, "quota" => quota, "outcome" => outcome, "tenant" => "other")
                .absolute(0);
        }
    }
    // Registering is what makes the exporter render a histogram; the handle is not needed.
    let _ = metrics::histogram!(DELIVERY_LAG);
    let _ = metrics::histogram!(PRESENCE_READ_DURATION);
}

/// Exports the Redis bus's metrics at 0: called when the gateway runs on Redis (on the
/// embedded bus they would only say "Redis down").
pub fn register_redis() {
    metrics::gauge!(REDIS_UP).set(0.0);
    metrics::gauge!(REDIS_SUBSCRIPTIONS).set(0.0);
    metrics::counter!(REDIS_RECONNECTS).absolute(0);
    // Leases, their reaping and the lifecycle stream live in Redis.
    for c in [LEASE_EXPIRIES, PRESENCE_REAPED, LIFECYCLE_ENTRIES] {
        metrics::counter!(c).absolute(0);
    }
    for result in ["ok", "lapsed", "error"] {
        metrics::counter!(LEASE_RENEWALS, "result" => result).absolute(0);
    }
    for reason in ["queue_full", "bus_unavailable"] {
        metrics::counter!(LIFECYCLE_DROPPED, "reason" => reason).absolute(0);
    }
    for result in [
        "recovered",
        "epoch_changed",
        "future_offset",
        "too_old",
        "too_many",
        "error",
    ] {
        metrics::counter!(GAP_READS, "result" => result).absolute(0);
    }
    let _ = metrics::histogram!(REDIS_PUBLISH_DURATION);
    let _ = metrics::histogram!(REDIS_POOL_WAIT);
}

fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "Open Socket.IO connections, by transport at connect time."
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Socket.IO connections accepted, by transport."
    );
    describe_counter!(DISCONNECTS, "Disconnects, by reason.");
    describe_counter!(AUTH_FAILURES, "Refused authentications, by reason code.");
    describe_gauge!(
        ROOMS,
        "Rooms (tenant and room) with at least one socket on this gateway."
    );
    describe_counter!(JOIN_REFUSED, "Refused join requests, by reason code.");
    describe_counter!(EVENTS_RECEIVED, "Events received from the bus, by channel.");
    describe_counter!(
        EVENTS_DELIVERED,
        "Event copies handed to sockets, by channel."
    );
    describe_counter!(
        DELIVERY_FAILURES,
        "Event copies a socket could not take, by reason."
    );
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "Delay from an event's timestamp to its hand-off to this gateway's sockets."
    );
    describe_counter!(
        BUS_INVALID,
        "Messages on the bus that were not valid events, by reason."
    );
    describe_counter!(
        PUBLISH_REQUESTS,
        "Publish API requests, by result (ok or error code)."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events published through this gateway, by channel (one per room)."
    );
    describe_gauge!(BUS_UP, "1 while the bus is usable, else 0.");
    describe_gauge!(
        REDIS_UP,
        "1 while the Redis subscription connection is up, else 0."
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Reconnect attempts of the Redis subscriber."
    );
    describe_gauge!(
        REDIS_SUBSCRIPTIONS,
        "Redis channels (rooms) this gateway is subscribed to."
    );
    describe_histogram!(
        REDIS_PUBLISH_DURATION,
        Unit::Seconds,
        "Time of one publish call to Redis (all rooms of one event)."
    );
    describe_histogram!(
        REDIS_POOL_WAIT,
        Unit::Seconds,
        "Time spent waiting for a pooled Redis connection."
    );
    describe_counter!(
        BUS_DUPLICATES,
        "Bus messages dropped because their offset was already relayed."
    );
    describe_counter!(
        RECOVERIES,
        "Recoveries requested by clients, by result (recovered or why not)."
    );
    describe_counter!(EVENTS_REPLAYED, "Events replayed to clients from history.");
    describe_counter!(
        RESYNCS,
        "Rooms told to resync because their history was lost."
    );
    describe_counter!(
        GAP_READS,
        "History reads after a Redis reconnect, by result."
    );
    describe_counter!(
        UPGRADES,
        "WebSockets opened to upgrade a long-polling session, by result (upgraded, timeout, refused)."
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Sockets cut because they could not keep up (outgoing buffer full), by transport."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "TCP connections refused because the gateway was full (GATEWAY_MAX_CONNECTIONS)."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts (for example out of file descriptors)."
    );
    describe_counter!(DRAINED, "Connections closed by a graceful drain.");
    describe_counter!(
        CLIENT_PROTOCOL_ERRORS,
        "Client protocol errors (bad frames or packets, refused WebSocket handshakes, unknown events), by reason."
    );
    describe_gauge!(READY, "1 while this gateway accepts new clients, else 0.");
    describe_counter!(
        TENANT_QUOTA,
        "Tenant quota checks, by quota, outcome and tenant (other unless listed in metricsTenants)."
    );
    describe_counter!(
        CONTROL_REQUESTS,
        "Control API calls (list, disconnect, revoke, rooms/leave), by action and result."
    );
    describe_counter!(
        API_KEY_REFUSALS,
        "API requests refused by the key check, by reason (missing, invalid, scope, tenant)."
    );
    describe_gauge!(
        PRESENCE_MEMBERS,
        "Room and user pairs with a socket on this gateway, in rooms with presence."
    );
    describe_gauge!(
        PRESENCE_ROOMS,
        "Rooms with presence that have a socket on this gateway."
    );
    describe_counter!(
        PRESENCE_WRITES,
        "Batches of presence writes, by result (ok, lapsed, error)."
    );
    describe_histogram!(
        PRESENCE_READ_DURATION,
        Unit::Seconds,
        "Time to read a room's presence from the store."
    );
    describe_counter!(
        PRESENCE_REFUSED,
        "Refused or failed presence requests (socket and HTTP), by reason code."
    );
    describe_counter!(
        PRESENCE_REAPED,
        "Members of lost gateways (lease expired) removed by this gateway."
    );
    describe_counter!(
        LEASE_RENEWALS,
        "Renewals of this gateway's presence lease, by result (ok, lapsed, error)."
    );
    describe_counter!(
        LEASE_EXPIRIES,
        "Gateways whose lease expired (they vanished without a goodbye), reaped by this gateway."
    );
    describe_counter!(
        LIFECYCLE_ENTRIES,
        "Lifecycle stream entries written, gateway_lost disconnects included."
    );
    describe_counter!(
        LIFECYCLE_DROPPED,
        "Lifecycle entries dropped, by reason (queue_full, bus_unavailable)."
    );
}
