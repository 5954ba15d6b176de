//! realtime-gateway: a horizontally scaled Socket.IO broadcast gateway.
//!
//! Browsers hold Socket.IO connections to any gateway instance; backend services publish
//! room-addressed events; every gateway relays each event to the sockets it holds in that room.
//! Rooms are always keyed by tenant, so no client ever sees another tenant's event.
//!
//! # Layout
//!
//! Top to bottom; a module only uses modules below it (`tests/layering.rs` checks it).
//!
//! - [`socket`]: the Socket.IO handlers (handshake auth, `authenticate`, `join`, `leave`,
//!   `refresh`, `presence`, `ping`), written once for both transports: `socket/ws.rs` hands them the packets
//!   of the gateway's own transport, `socket/sio.rs` holds all of the socketioxide glue.
//!   [`http`]: health, readiness, the publish API, the catalog, CORS for browsers and
//!   development tokens, presence reads (`/v1/presence`); `/metrics` on the admin listener.
//! - [`state`]: what the handlers share ([`state::AppState`]); [`config`]: settings (flags and
//!   environment variables), validated once into a [`Config`].
//! - [`relay`]: room membership, its one owner: the room counts that drive the bus
//!   subscriptions, and the task that relays bus deliveries to the members and splices
//!   replays into live delivery.
//! - [`peer`]: what both transports share: a connected client ([`peer::Peer`]) and its
//!   session (a state machine), acks, events encoded once, the timers.
//! - [`wire`]: the gateway's own WebSocket transport (with permessage-deflate and the
//!   MessagePack parser), a leaf that hands decoded packets up through [`wire::Handler`]; [`drain`]: the accepted connections, closed in batches on
//!   shutdown; [`bus`]: the [`bus::Bus`] trait (publish with per-room offsets, subscribe) and
//!   its embedded and Redis implementations.
//! - [`presence`]: who is in a room, per user, across the fleet: the gateway's table, the Redis
//!   and in-process stores, and the leases that remove a dead gateway's members;
//!   [`lifecycle`]: the per-tenant lifecycle stream (connect, authenticate, join, leave,
//!   disconnect, and `gateway_lost` for a dead gateway's connections). Both sit beside the bus
//!   (they write to Redis through the same settings); the relay reports every room entry and
//!   exit to them.
//! - [`auth`]: JWT verification into an [`auth::Identity`], the room policy, the browser
//!   origins allowed, and development tokens;
//!   [`metrics`]: metric names and descriptions.
//! - [`events`]: ids and room names, the catalog of channels and events, envelopes and
//!   publish validation.
//! - [`shutdown`]: signal handling.
//!
//! [`run`] takes already bound listeners and a cancellation token, so tests and embedders bind
//! port 0 and stop the gateway when they choose.

mod auth;
mod bus;
mod config;
mod drain;
mod events;
mod http;
mod lifecycle;
mod metrics;
mod peer;
mod presence;
mod relay;
mod shutdown;
mod socket;
mod state;
mod wire;

use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// The public face: what the binary, the tests and embedders use.
pub use auth::{ClaimNames, DevTokens, Identity};
pub use bus::redis::{Publisher, RedisSettings, FUNCTION_VERSION};
pub use bus::BusError;
pub use config::{parse_duration, Config, DevSecrets, LogFormat, ServeArgs};
pub use events::catalog::{parse_payload, Catalog};
pub use events::envelope::now_millis;
pub use events::{Event, PublishRules, RoomKey, RoomName, TenantId, UserId, ValidPublish};
// Presence and the lifecycle stream of one gateway, for embedders that run them beside their
// own connections (and the tests that run several gateways' fleet sides in one process).
pub use lifecycle::{Lifecycle, Socket};
pub use presence::lease::Fleet;
pub use presence::store::Store;
pub use presence::{Presence, PresenceConfig};
pub use shutdown::on_signals;
// An event encoded once in every shape a WebSocket session may take (the bench's wire sizes).
pub use peer::Outgoing;
use state::AppState;
pub use wire::codec::Codec;

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
    // One socketioxide instance per parser (its parser is per instance): JSON under
    // `/socket.io/`, MessagePack under an internal path the HTTP server moves `parser=msgpack`
    // requests to.
    let sio = |config: &Config| {
        SocketIo::builder()
            .ping_interval(config.ping_interval)
            .ping_timeout(config.ping_timeout)
            .max_payload(config.max_client_packet_bytes)
            .ws_max_message_size(config.max_client_packet_bytes as usize)
            // A long-polling socket's queue must also take a whole replay at once.
            .max_buffer_size(config.socket_buffer.max(config.max_replay as usize + 64))
            .ws_read_buffer_size(config.ws_read_buffer)
    };
    let (layer, io) = sio(&config).build_layer();
    let (msgpack_layer, msgpack_io) = sio(&config)
        .with_parser(socketioxide::ParserConfig::msgpack())
        .req_path(wire::MSGPACK_PATH)
        .build_layer();
    let (state, relay_control) = AppState::new(config, bus);
    socket::register(&io, state.clone());
    socket::register(&msgpack_io, state.clone());

    // Background tasks run until the public server is done (the drain included), then `run`
    // waits for every one of them to finish.
    let tasks = tokio_util::task::TaskTracker::new();
    let served = CancellationToken::new();
    tasks.spawn(relay::run(rx, relay_control, served.clone()));
    tasks.spawn(fire_deadlines(state.clone(), served.clone()));
    tasks.spawn(watch_readiness(state.clone(), served.clone()));
    // Presence and lifecycle outlive the drain: the sockets it closes still leave their rooms.
    let fleet_stop = CancellationToken::new();
    let fleet_tasks = start_fleet(&state, &fleet_stop).await;

    let app = http::router(state.clone())
        .layer(layer)
        .layer(msgpack_layer)
        .layer(axum::middleware::from_fn(http::route_msgpack_sessions))
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
    tasks.spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::warn!(error = %e, "admin listener stopped with an error");
        }
    });

    let connections = state.connections.clone();
    let (to_http, from_acceptor) = tokio::sync::mpsc::channel(1024);
    let local = public.local_addr()?;
    {
        let transport = socket::Transport::new(state.clone());
        let accept = drain::accept_loop(public, connections.clone(), move |stream, addr| {
            tokio::spawn(wire::route(
                transport.clone(),
                stream,
                addr,
                to_http.clone(),
            ));
        });
        let served = served.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = served.cancelled() => {}
                _ = accept => {}
            }
        });
    }
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
            msgpack_io.close().await;
        }
    };
    axum::serve(public, app)
        .with_graceful_shutdown(drain)
        .await?;
    served.cancel();
    fleet_stop.cancel();
    stop_fleet(&state, fleet_tasks).await;
    tasks.close();
    tasks.wait().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Starts presence's writer and, on Redis, the lease and the lifecycle writer.
async fn start_fleet(
    state: &Arc<AppState>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(
        state
            .presence
            .clone()
            .run(state.fleet.clone(), stop.clone()),
    )];
    if let Some(fleet) = &state.fleet {
        // Take the lease before the first socket connects, so its first writes carry it.
        let leased = match fleet.load().await {
            Ok(()) => fleet.renew().await,
            Err(e) => Err(e),
        };
        if let Err(e) = leased {
            tracing::warn!(error = %e, "no presence lease yet (Redis unreachable); taking it as soon as Redis answers");
        }
        tasks.push(tokio::spawn(fleet.clone().run(stop.clone())));
        tasks.push(tokio::spawn(
            state.lifecycle.clone().run(fleet.clone(), stop.clone()),
        ));
    }
    tasks
}

/// Waits (bounded) for presence and lifecycle to write what the last disconnects changed, then
/// gives the lease back.
async fn stop_fleet(state: &AppState, tasks: Vec<tokio::task::JoinHandle<()>>) {
    let flush = futures_util::future::join_all(tasks);
    let limit = state
        .config
        .redis
        .as_ref()
        .map_or(std::time::Duration::from_secs(1), |r| r.timeout * 2);
    if tokio::time::timeout(limit, flush).await.is_err() {
        tracing::warn!("presence and lifecycle writes did not finish before exit");
    }
    if let Some(fleet) = &state.fleet {
        fleet.retire().await;
    }
}

/// Fires due socket deadlines, sleeping until the next one.
async fn fire_deadlines(state: Arc<AppState>, shutdown: CancellationToken) {
    loop {
        let due = tokio::select! {
            _ = shutdown.cancelled() => return,
            due = state.deadlines.next_due() => due,
        };
        for (id, what) in due {
            socket::on_deadline(&state, id, what);
        }
    }
}

/// Keeps the readiness gauges current between scrapes of `/readyz`.
async fn watch_readiness(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        ::metrics::gauge!(metrics::READY).set(if state.is_ready() { 1.0 } else { 0.0 });
        ::metrics::gauge!(metrics::BUS_UP).set(if state.bus.is_ready() { 1.0 } else { 0.0 });
    }
}
