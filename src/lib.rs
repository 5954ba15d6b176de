//! realtime-gateway: a horizontally scaled Socket.IO broadcast gateway.
//!
//! Browsers hold Socket.IO connections to any gateway instance; backend services publish
//! room-addressed events; every gateway relays each event to the sockets it holds in that room.
//! Rooms are always keyed by tenant, so no client ever sees another tenant's event.
//!
//! # Layout
//!
//! - [`config`]: settings (flags and environment variables), validated once into a [`Config`].
//! - [`auth`]: JWT verification into an [`auth::Identity`], the room policy, the browser
//!   origins allowed, and development tokens.
//! - [`events`]: ids and room names, the catalog of channels and events, envelopes and
//!   publish validation.
//! - [`bus`]: the [`bus::Bus`] trait (publish with per-room offsets, subscribe) and its
//!   embedded implementation.
//! - [`socket`]: the Socket.IO handlers (handshake auth, `authenticate`, `join`, `leave`,
//!   `refresh`, `ping`), per-socket sessions, room membership counts and timers.
//! - [`relay`]: bus deliveries to local sockets (it owns the room → sockets map).
//! - [`wire`]: the gateway's own WebSocket transport for direct WebSocket sessions (long-polling
//!   and polling-then-upgrade sessions run on socketioxide behind the same handlers).
//! - [`http`]: health, readiness, the publish API, CORS for browsers and development tokens;
//!   `/metrics` on the admin listener.
//! - [`metrics`]: metric names and descriptions.
//! - [`shutdown`]: signal handling; [`drain`]: closing connections in batches on shutdown.
//! - [`client`]: a minimal Socket.IO client over WebSocket (tests and tools).
//!
//! [`run`] takes already bound listeners and a cancellation token, so tests and embedders bind
//! port 0 and stop the gateway when they choose.

pub mod auth;
pub mod bus;
pub mod client;
pub mod config;
pub mod drain;
pub mod events;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod shutdown;
pub mod socket;
pub mod state;
pub mod wire;

use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use state::AppState;

/// How many bus deliveries may wait for the relay before the bus reader is slowed down.
const DELIVERY_QUEUE: usize = 4096;

/// Runs a gateway on the given listeners until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = metrics::install();
    metrics::allow_channel_labels(&config.publish.catalog);
    let (tx, rx) = tokio::sync::mpsc::channel(DELIVERY_QUEUE);
    let bus: Arc<dyn bus::Bus> = match &config.redis {
        None => Arc::new(bus::memory::MemoryBus::new(
            tx,
            config.history_max_len as usize,
            config.history_ttl,
        )),
        Some(settings) => Arc::new(
            bus::redis::RedisBus::start(
                settings.clone(),
                tx,
                config.policy.max_room_len,
                config.publish.strict_catalog,
                shutdown.clone(),
            )
            .await?,
        ),
    };
    let (layer, io) = SocketIo::builder()
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(config.max_client_packet_bytes)
        .ws_max_message_size(config.max_client_packet_bytes as usize)
        // A long-polling socket's queue must also take a whole replay at once.
        .max_buffer_size(config.socket_buffer.max(config.max_replay as usize + 64))
        .ws_read_buffer_size(config.ws_read_buffer)
        .build_layer();
    let (relay_handle, relay_control) = relay::channel();
    let state = AppState::new(config, bus, relay_handle);
    socket::register(&io, state.clone());

    let relay = tokio::spawn(relay::run(state.clone(), rx, relay_control));
    let ticker = tokio::spawn(tick(state.clone(), shutdown.clone()));

    let app = http::router(state.clone())
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::refuse_new_sessions_while_draining,
        ))
        // Outermost, so every answer on a browser path (a draining refusal too) carries CORS.
        .layer(axum::middleware::from_fn_with_state(
            http::cors::BrowserAccess::new(&state.config.cors_origins),
            http::cors::browser_access,
        ))
        .into_make_service_with_connect_info::<drain::ConnId>();
    tracing::info!(
        public = %public.local_addr()?,
        admin = %admin.local_addr()?,
        "listening"
    );
    let admin_server = axum::serve(admin, http::admin_router(metrics))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let admin_task = tokio::spawn(async move { admin_server.await });

    let connections = state.connections.clone();
    let (to_http, from_acceptor) = tokio::sync::mpsc::channel(1024);
    let local = public.local_addr()?;
    let acceptor = {
        let state = state.clone();
        tokio::spawn(drain::accept_loop(
            public,
            connections.clone(),
            move |stream, addr| {
                tokio::spawn(wire::route(state.clone(), stream, addr, to_http.clone()));
            },
        ))
    };
    let public = drain::TrackedListener::new(from_acceptor, local);
    let drain = {
        let state = state.clone();
        let io = io.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            state.start_draining();
            let (delay, period) = (state.config.drain_delay, state.config.drain_period);
            tracing::info!(
                ?delay,
                ?period,
                connections = connections.len(),
                "draining: not ready; closing connections after the delay"
            );
            tokio::time::sleep(delay).await;
            let closed = drain::close_gradually(&connections, period).await;
            ::metrics::counter!(metrics::DRAINED).increment(closed as u64);
            tracing::info!(closed, "drain done");
            io.close().await;
        }
    };
    axum::serve(public, app)
        .with_graceful_shutdown(drain)
        .await?;
    acceptor.abort();
    ticker.abort();
    relay.abort();
    if let Ok(Err(e)) = admin_task.await {
        tracing::warn!(error = %e, "admin listener stopped with an error");
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Fires due socket deadlines and keeps the readiness gauges current.
async fn tick(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(socket::deadlines::TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        for (id, what) in state.deadlines.take_due(std::time::Instant::now()) {
            socket::on_deadline(&state, id, what);
        }
        ::metrics::gauge!(metrics::READY).set(if state.is_ready() { 1.0 } else { 0.0 });
        ::metrics::gauge!(metrics::BUS_UP).set(if state.bus.is_ready() { 1.0 } else { 0.0 });
    }
}
