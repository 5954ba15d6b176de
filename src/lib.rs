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
//!   `refresh`, `presence`, `ping`), written once: `socket/ws.rs` hands them the packets of
//!   the gateway's own transport (WebSocket and long-polling).
//!   [`http`]: the public HTTP/1.1 server (`http/serve.rs`), health, readiness, the publish API, the control API, the catalog, CORS for
//!   browsers and development tokens, presence reads (`/v1/presence`); `/metrics` on the admin
//!   listener. [`control`]: list, disconnect, revoke and force-leave a user's sockets on every
//!   gateway, through the Redis control channel (locally on the embedded bus).
//! - [`state`]: what the handlers share ([`state::AppState`]); [`config`]: settings (flags and
//!   environment variables), validated once into a [`Config`].
//! - [`relay`]: room membership, its one owner: the room counts that drive the bus
//!   subscriptions, and the task that relays bus deliveries to the members and splices
//!   replays into live delivery.
//! - [`peer`]: what both transports share: a connected client ([`peer::Peer`]) and its
//!   session (a state machine), acks, events encoded once, the timers.
//! - [`wire`]: the gateway's own transport, WebSocket and Engine.IO long-polling with the
//!   upgrade between them (with permessage-deflate and the MessagePack parser), a leaf that hands decoded packets up through [`wire::Handler`];
//!   [`drain`]: the accepted connections, closed in batches on shutdown; [`bus`]: the
//!   [`bus::Bus`] trait (publish with per-room offsets, subscribe) and its embedded and Redis
//!   implementations; [`tenancy`]: API keys with tenants and scopes, per-tenant quotas held
//!   across the fleet, revoked tokens.
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

#![forbid(unsafe_code)]
// The layout above is a map for the crate's developers: its links name private modules, which
// `cargo doc --document-private-items` renders.
#![allow(rustdoc::private_intra_doc_links)]

mod auth;
mod bus;
mod config;
mod control;
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
mod tenancy;
mod wire;

use std::sync::Arc;

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
    let fleet = config.redis.as_ref().map(tenancy::Fleet::new).transpose()?;
    let tenancy = tenancy::Tenancy::new(
        config.tenancy.clone(),
        config.gateway_id.as_str().into(),
        config.revocation_ttl,
        fleet,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let (state, relay_control) = AppState::new(config, bus, tenancy);
    let transport = socket::Transport::new(state.clone());
    // Before serving: the publish rates for rtg_publish, and the stored revocations, so a
    // restarted gateway never lets a revoked token in.
    state.tenancy.sync_limits().await;
    if let Err(e) = state.tenancy.load_revocations().await {
        tracing::warn!(error = %e, "stored revocations not read yet; the control channel reads them when Redis is back");
    }

    // Background tasks run until the public server is done (the drain included), then `run`
    // waits for every one of them to finish. The control channel stops when shutdown begins.
    let tasks = tokio_util::task::TaskTracker::new();
    let served = CancellationToken::new();
    tasks.spawn(relay::run(rx, relay_control, served.clone()));
    tasks.spawn(fire_deadlines(state.clone(), served.clone()));
    tasks.spawn(beat(state.clone(), served.clone()));
    tasks.spawn(reload_on_sighup(state.clone(), served.clone()));
    tasks.spawn(control::run(state.clone(), shutdown.clone()));
    // Presence and lifecycle outlive the drain: the sockets it closes still leave their rooms.
    let fleet_stop = CancellationToken::new();
    let fleet_tasks = start_fleet(&state, &fleet_stop).await;

    let engine_io = {
        let transport = transport.clone();
        move |req: axum::extract::Request| wire::polling::handle(transport.clone(), req)
    };
    let app = http::router(state.clone())
        .route("/socket.io/", axum::routing::any(engine_io.clone()))
        .route("/socket.io", axum::routing::any(engine_io))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::refuse_new_sessions_while_draining,
        ))
        // Outermost, so every answer on a browser path (a draining refusal too) carries CORS.
        .layer(axum::middleware::from_fn_with_state(
            http::cors::BrowserAccess::new(&state.config.cors_origins),
            http::cors::browser_access,
        ));
    tracing::info!(
        public = %public.local_addr()?,
        admin = %admin.local_addr()?,
        "listening"
    );
    let admin_server = axum::serve(admin, http::admin_router(metrics, state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tasks.spawn(async move {
        if let Err(e) = admin_server.await {
            tracing::warn!(error = %e, "admin listener stopped with an error");
        }
    });

    let connections = state.connections.clone();
    let (to_http, from_acceptor) = tokio::sync::mpsc::channel(1024);
    {
        let transport = transport.clone();
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
    let drain = {
        let state = state.clone();
        let transport = transport.clone();
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
            // Long-polling sessions have no connection of their own: each gets the Engine.IO
            // close on its pending GET (a lost transport to the stock client, which reconnects
            // elsewhere), before the connections that carry those GETs are closed.
            let polling = transport.close_polling().await;
            let closed = drain::close_gradually(&connections, period).await;
            ::metrics::counter!(metrics::DRAINED).increment((closed + polling) as u64);
            tracing::info!(closed, polling, "drain done");
        }
    };
    http::serve::serve(from_acceptor, app, drain).await;
    served.cancel();
    fleet_stop.cancel();
    stop_fleet(&state, fleet_tasks).await;
    tasks.close();
    tasks.wait().await;
    state.tenancy.leave_fleet().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Renews this gateway's lease in the fleet and its connection counts; stores the publish
/// rates for `rtg_publish` (again at every beat, so a Redis that restarted empty gets them).
async fn beat(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(tenancy::fleet::BEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if n.is_multiple_of(10) {
            state.tenancy.sync_limits().await;
        }
        n += 1;
        state.tenancy.prune(|id| state.peers.get(id).is_some());
        state.tenancy.beat().await;
    }
}

/// SIGHUP: re-reads the keys and tenants files; a file that does not load keeps what is in
/// force, and the log says why. Connections are not touched.
async fn reload_on_sighup(state: Arc<AppState>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; keys are read at start only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match state.tenancy.reload().await {
            Ok((keys, connections)) => {
                tracing::info!(
                    keys,
                    connections,
                    "SIGHUP: API keys and tenant quotas reloaded"
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload failed; the keys and quotas in force are kept")
            }
        }
    }
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
