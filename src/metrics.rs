//! Every metric the gateway exports: names, help texts and label sets, in one place.
//!
//! Labels only ever take values from bounded sets (a transport, a reason code, a catalog
//! channel or `other`), never a room, a user or a raw path.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;

use crate::events::catalog::Catalog;

/// Declares each metric: its name constant, its kind and its help text, which is also the
/// constant's documentation and which [`describe`] registers, so that a metric is spelled out
/// in one place.
macro_rules! metrics {
    ($($name:ident: $kind:ident = $metric:literal, $help:literal;)+) => {
        $(
            #[doc = concat!("`", $metric, "` (", stringify!($kind), "): ", $help)]
            pub const $name: &str = $metric;
        )+

        /// Registers every metric's help text (and unit) with the recorder.
        fn describe() {
            $(metrics!(@describe $kind $name $help);)+
        }
    };
    (@describe counter $name:ident $help:literal) => { describe_counter!($name, $help) };
    (@describe gauge $name:ident $help:literal) => { describe_gauge!($name, $help) };
    (@describe histogram $name:ident $help:literal) => {
        describe_histogram!($name, Unit::Seconds, $help)
    };
}

metrics! {
    CONNECTIONS: gauge = "gateway_connections",
        "Open Socket.IO connections, by transport at connect time.";
    CONNECTIONS_TOTAL: counter = "gateway_connections_total",
        "Socket.IO connections accepted, by transport.";
    DISCONNECTS: counter = "gateway_disconnects_total", "Disconnects, by reason.";
    AUTH_FAILURES: counter = "gateway_auth_failures_total",
        "Refused authentications, by reason code.";
    ROOMS: gauge = "gateway_rooms",
        "Rooms (tenant and room) with at least one socket on this gateway.";
    JOIN_REFUSED: counter = "gateway_join_refused_total", "Refused join requests, by reason code.";
    EVENTS_RECEIVED: counter = "gateway_events_received_total",
        "Events received from the bus, by channel.";
    EVENTS_DELIVERED: counter = "gateway_events_delivered_total",
        "Event copies handed to sockets, by channel.";
    DELIVERY_FAILURES: counter = "gateway_delivery_failures_total",
        "Event copies a socket could not take, by reason.";
    DELIVERY_LAG: histogram = "gateway_delivery_lag_seconds",
        "Delay from an event's timestamp to its hand-off to this gateway's sockets.";
    BUS_INVALID: counter = "gateway_bus_invalid_total",
        "Messages on the bus that were not valid events, by reason.";
    PUBLISH_REQUESTS: counter = "gateway_publish_requests_total",
        "Publish API requests, by result (ok or error code).";
    EVENTS_PUBLISHED: counter = "gateway_events_published_total",
        "Events published through this gateway, by channel (one per room).";
    BUS_UP: gauge = "gateway_bus_up", "1 while the bus is usable, else 0.";
    READY: gauge = "gateway_ready", "1 while this gateway accepts new clients, else 0.";

    REDIS_UP: gauge = "gateway_redis_up",
        "1 while the Redis subscription connection is up, else 0.";
    REDIS_RECONNECTS: counter = "gateway_redis_reconnects_total",
        "Reconnect attempts of the Redis subscriber.";
    REDIS_SUBSCRIPTIONS: gauge = "gateway_redis_subscriptions",
        "Redis channels (rooms) this gateway is subscribed to.";
    REDIS_PUBLISH_DURATION: histogram = "gateway_redis_publish_duration_seconds",
        "Time of one publish call to Redis (all rooms of one event).";
    REDIS_POOL_WAIT: histogram = "gateway_redis_pool_wait_duration_seconds",
        "Time spent waiting for a pooled Redis connection.";
    BUS_DUPLICATES: counter = "gateway_bus_duplicates_total",
        "Bus messages dropped because their offset was already relayed.";

    RECOVERIES: counter = "gateway_recoveries_total",
        "Recoveries requested by clients, by result (recovered or why not).";
    EVENTS_REPLAYED: counter = "gateway_events_replayed_total",
        "Events replayed to clients from history.";
    RESYNCS: counter = "gateway_resyncs_total",
        "Rooms told to resync because their history was lost.";
    GAP_READS: counter = "gateway_gap_reads_total",
        "History reads after a Redis reconnect, by result.";
    SLOW_CONSUMERS: counter = "gateway_slow_consumer_disconnects_total",
        "Sockets cut because they could not keep up (outgoing buffer full), by transport.";
    UPGRADES: counter = "gateway_upgrades_total",
        "WebSockets opened to upgrade a long-polling session, by result (upgraded, timeout, refused).";
    CONNECTIONS_REFUSED: counter = "gateway_connections_refused_total",
        "TCP connections refused because the gateway was full (GATEWAY_MAX_CONNECTIONS).";
    ACCEPT_ERRORS: counter = "gateway_accept_errors_total",
        "Failed accepts (for example out of file descriptors).";
    CLIENT_PROTOCOL_ERRORS: counter = "gateway_client_protocol_errors_total",
        "Client protocol errors (bad frames or packets, refused WebSocket handshakes, unknown events), by reason.";
    TENANT_QUOTA: counter = "gateway_tenant_quota_total",
        "Tenant quota checks, by quota, outcome and tenant (other unless listed in metricsTenants).";
    CONTROL_REQUESTS: counter = "gateway_control_requests_total",
        "Control API calls (list, disconnect, revoke, rooms/leave), by action and result.";
    API_KEY_REFUSALS: counter = "gateway_api_key_refusals_total",
        "API requests refused by the key check, by reason (missing, invalid, scope, tenant).";
    DRAINED: counter = "gateway_drained_connections_total",
        "Connections closed by a graceful drain.";

    PRESENCE_MEMBERS: gauge = "gateway_presence_members",
        "Room and user pairs with a socket on this gateway, in rooms with presence.";
    PRESENCE_ROOMS: gauge = "gateway_presence_rooms",
        "Rooms with presence that have a socket on this gateway.";
    PRESENCE_WRITES: counter = "gateway_presence_writes_total",
        "Batches of presence writes, by result (ok, lapsed, error).";
    PRESENCE_READ_DURATION: histogram = "gateway_presence_read_duration_seconds",
        "Time to read a room's presence from the store.";
    PRESENCE_REFUSED: counter = "gateway_presence_refused_total",
        "Refused or failed presence requests (socket and HTTP), by reason code.";
    PRESENCE_REAPED: counter = "gateway_presence_reaped_members_total",
        "Members of lost gateways (lease expired) removed by this gateway.";
    LEASE_RENEWALS: counter = "gateway_presence_lease_renewals_total",
        "Renewals of this gateway's presence lease, by result (ok, lapsed, error).";
    LEASE_EXPIRIES: counter = "gateway_presence_lease_expiries_total",
        "Gateways whose lease expired (they vanished without a goodbye), reaped by this gateway.";
    LIFECYCLE_ENTRIES: counter = "gateway_lifecycle_entries_total",
        "Lifecycle stream entries written, gateway_lost disconnects included.";
    LIFECYCLE_DROPPED: counter = "gateway_lifecycle_dropped_total",
        "Lifecycle entries dropped, by reason (queue_full, bus_unavailable).";
}

/// Channel names a label may take: those of every catalog a gateway of this process serves.
/// The recorder is process-wide, so its label set is too; it is bounded by those catalogs.
static CHANNEL_LABELS: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// Lets the channels of `catalog` appear as `channel` labels (called once per gateway start).
pub fn allow_channel_labels(catalog: &Catalog) {
    let mut names = CHANNEL_LABELS.write();
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
    let names = CHANNEL_LABELS.read();
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
    (UPGRADES, "result", "upgraded timeout refused"),
    (PRESENCE_WRITES, "result", "ok lapsed error"),
    (PRESENCE_REFUSED, "reason", "invalid_request invalid_room invalid_field not_authenticated \
        room_kind_not_allowed presence_not_enabled forbidden_room presence_unavailable \
        missing_api_key invalid_api_key publish_disabled scope_not_allowed tenant_not_allowed"),
];

/// Exports each `(counter, label, values)` at 0 for every one of its space-separated values.
fn zero(known: &[(&'static str, &'static str, &'static str)]) {
    for (name, label, values) in known {
        for v in values.split_whitespace() {
            metrics::counter!(*name, *label => v).absolute(0);
        }
    }
}

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
    // The catalog's channels are registered as they are allowed (`allow_channel_labels`).
    register_channel("other");
    zero(KNOWN);
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
    zero(&[
        (LEASE_RENEWALS, "result", "ok lapsed error"),
        (LIFECYCLE_DROPPED, "reason", "queue_full bus_unavailable"),
        (
            GAP_READS,
            "result",
            "recovered epoch_changed future_offset too_old too_many error",
        ),
    ]);
    let _ = metrics::histogram!(REDIS_PUBLISH_DURATION);
    let _ = metrics::histogram!(REDIS_POOL_WAIT);
}
