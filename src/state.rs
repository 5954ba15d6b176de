//! State shared by the HTTP handlers, the socket handlers and the background tasks of one
//! gateway. Passed in, never global, so several gateways can run in one process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::bus::Bus;
use crate::config::Config;
use crate::drain::Connections;
use crate::lifecycle::Lifecycle;
use crate::peer::deadlines::Deadlines;
use crate::peer::Peers;
use crate::presence::lease::Fleet;
use crate::presence::store::{MemoryStore, Store};
use crate::presence::Presence;
use crate::relay::{self, RelayControl, RelayHandle};
use crate::wire::{refuse, Refusal};

/// Everything a gateway's handlers need.
pub struct AppState {
    /// Validated settings.
    pub config: Config,
    /// The event bus.
    pub bus: Arc<dyn Bus>,
    /// Auth grace and token expiry timers.
    pub deadlines: Deadlines,
    /// Room membership: the relay task (members, entries with replay) and the room counts
    /// that drive the bus subscriptions.
    pub relay: RelayHandle,
    /// Connected sockets by id (timers find them here).
    pub peers: Peers,
    /// Open connections of the public listener (drain, slow-consumer cuts).
    pub connections: Arc<Connections>,
    /// Presence of the rooms whose kinds have it.
    pub presence: Arc<Presence>,
    /// The lifecycle stream (a no-op unless enabled).
    pub lifecycle: Arc<Lifecycle>,
    /// This gateway's lease and incarnation in Redis (`None` on the embedded bus).
    pub fleet: Option<Arc<Fleet>>,
    /// Publish rate per API key (keyed by the key's name).
    pub publish_limiter: governor::DefaultKeyedRateLimiter<Arc<str>>,
    /// API keys, tenant quotas and revocations.
    pub tenancy: crate::tenancy::Tenancy,
    /// Set when shutdown began: `/readyz` answers 503 from then on.
    draining: AtomicBool,
}

impl AppState {
    /// State for a gateway with `config` on `bus`, its keys, quotas and revocations in
    /// `tenancy`, and the receiving end of its relay (for [`crate::relay::run`]).
    pub fn new(
        config: Config,
        bus: Arc<dyn Bus>,
        tenancy: crate::tenancy::Tenancy,
    ) -> (Arc<Self>, RelayControl) {
        let connections = Arc::new(Connections::with_limit(config.max_connections));
        let publish_limiter =
            governor::RateLimiter::keyed(governor::Quota::per_second(config.publish_rate));
        let mut config = config;
        if config.redis.as_ref().is_some_and(|r| r.is_cluster())
            && (!config.presence.kinds.is_empty() || config.presence.lifecycle)
        {
            // Presence writes span a room's slot and the lease registry's: not on a cluster yet.
            tracing::warn!(
                "presence and the lifecycle stream are off: they do not run on a Redis Cluster yet \
                 (GATEWAY_PRESENCE_KINDS and GATEWAY_LIFECYCLE ignored)"
            );
            config.presence.kinds.clear();
            config.presence.events.clear();
            config.presence.lifecycle = false;
        }
        let cluster = config.redis.as_ref().is_some_and(|r| r.is_cluster());
        let fleet = config
            .redis
            .as_ref()
            .filter(|_| !cluster)
            .and_then(|redis| {
                Fleet::new(redis, config.presence.clone())
                    .inspect_err(|e| tracing::error!(error = %e, "presence cannot use Redis"))
                    .ok()
            });
        let store = match &fleet {
            Some(f) => Store::Redis(f.clone()),
            None => Store::Memory(MemoryStore::new(bus.clone())),
        };
        let presence = Arc::new(Presence::new(config.presence.clone(), store));
        let lifecycle = Arc::new(Lifecycle::new(config.presence.lifecycle && fleet.is_some()));
        let (relay, control) = relay::channel(bus.clone(), presence.clone(), lifecycle.clone());
        let state = Arc::new(Self {
            relay,
            tenancy,
            connections,
            publish_limiter,
            presence,
            lifecycle,
            fleet,
            config,
            bus,
            deadlines: Deadlines::default(),
            peers: Peers::default(),
            draining: AtomicBool::new(false),
        });
        (state, control)
    }

    /// Marks the gateway as draining (no longer ready).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why a new Socket.IO session is refused now, if it is: `draining` (503), which a load
    /// balancer retries on another gateway. The one answer of both transports.
    pub fn session_refusal(&self) -> Option<Refusal> {
        self.is_draining().then(|| {
            refuse(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this gateway is shutting down; connect to another one",
            )
        })
    }

    /// Ready for new clients: the bus is usable and the gateway is not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && self.bus.is_ready()
            && self.tenancy.control_ready()
            && !self.connections.is_full()
    }

    /// Sets the readiness gauges to what [`AppState::is_ready`] and the bus say now (at each
    /// scrape of `/metrics`).
    pub fn gauge_readiness(&self) {
        let as_gauge = |up: bool| if up { 1.0 } else { 0.0 };
        ::metrics::gauge!(crate::metrics::READY).set(as_gauge(self.is_ready()));
        ::metrics::gauge!(crate::metrics::BUS_UP).set(as_gauge(self.bus.is_ready()));
    }
}
