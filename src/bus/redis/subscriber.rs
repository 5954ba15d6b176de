//! The subscriber: one dedicated pub/sub connection that follows the rooms this gateway
//! serves, turns each message into a [`Delivery`], and heals itself after Redis drops.
//!
//! Subscriptions are reconciled, not commanded: joins and leaves only edit the *wanted* set,
//! and one task brings the connection's subscriptions in line with it, in batches. After a
//! reconnect the same code subscribes everything again. A room whose last member left stays
//! subscribed for `unsubscribe_delay`, so join/leave churn does not hammer Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Publisher, RedisSettings};
use crate::bus::{BusError, BusMessage, Delivery, DeliverySender, Position, Recovery};
use crate::events::catalog;
use crate::events::envelope::RESERVED_EVENT_NAMES;
use crate::events::{Event, RoomKey};
use crate::metrics;

mod sharded;

/// How often the wanted set is reconciled even without a change (to release delayed rooms).
const RECONCILE_TICK: Duration = Duration::from_millis(250);
/// Most channels per SUBSCRIBE / UNSUBSCRIBE command.
const BATCH: usize = 500;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the gateway wants subscribed, kept so that reconciling costs the size of the change,
/// not the number of rooms served.
#[derive(Default)]
struct Wants {
    /// Rooms wanted: `None` while they have members, `Some(t)` to release at `t`.
    wanted: HashMap<RoomKey, Option<Instant>>,
    /// Rooms wanted since the last reconcile (some may already be subscribed).
    to_subscribe: HashSet<RoomKey>,
    /// Release deadlines, oldest first (the delay is constant, so they arrive in order).
    releases: VecDeque<(Instant, RoomKey)>,
}

/// Shared state of the subscriber.
pub struct Subscriber {
    settings: Arc<RedisSettings>,
    wants: Mutex<Wants>,
    /// Rooms the connection is subscribed to now.
    subscribed: Mutex<HashSet<RoomKey>>,
    /// Woken when `wanted` changes.
    changed: Notify,
    /// Woken when `subscribed` changes.
    confirmed: Notify,
    /// Connected and subscribed to everything wanted at the last reconcile.
    up: AtomicBool,
    /// Last `(epoch, offset)` relayed per room: what a gap read after a blip starts from.
    last: Mutex<HashMap<RoomKey, (Arc<str>, u64)>>,
    deliveries: DeliverySender,
    max_room_len: usize,
    strict_catalog: bool,
}

/// Waits out `backoff` (with jitter, so a fleet does not reconnect in lockstep) and doubles it
/// up to [`BACKOFF_MAX`]; false when shutdown came first.
async fn back_off(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Why a bus message was dropped (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not `<offset>|<epoch>|<json>`.
    BadFrame,
    /// The envelope is not valid JSON of the right shape.
    BadEnvelope,
    /// The envelope's tenant differs from the channel's.
    TenantMismatch,
    /// A malformed channel name (strict mode) or a reserved Socket.IO name. Channels are not
    /// looked up in this gateway's catalog: gateways may run different catalogs, and each one
    /// validates only what it publishes.
    UnknownChannel,
}

impl Invalid {
    fn label(self) -> &'static str {
        match self {
            Invalid::BadFrame => "bad_frame",
            Invalid::BadEnvelope => "bad_envelope",
            Invalid::TenantMismatch => "tenant_mismatch",
            Invalid::UnknownChannel => "unknown_channel",
        }
    }
}

/// Parses one message of `room`'s channel into `(epoch, offset, event)`.
pub fn parse_message(
    room: &RoomKey,
    payload: &[u8],
    strict_catalog: bool,
) -> Result<(Arc<str>, u64, Event), Invalid> {
    let text = std::str::from_utf8(payload).map_err(|_| Invalid::BadFrame)?;
    let mut parts = text.splitn(3, '|');
    let (Some(offset), Some(epoch), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::BadFrame);
    };
    let offset: u64 = offset.parse().map_err(|_| Invalid::BadFrame)?;
    if offset == 0 || epoch.is_empty() {
        return Err(Invalid::BadFrame);
    }
    let event: Event = serde_json::from_str(body).map_err(|_| Invalid::BadEnvelope)?;
    if event.id.is_empty() || event.event.is_empty() || !event.payload.get().starts_with('{') {
        return Err(Invalid::BadEnvelope);
    }
    if &*event.tenant != room.tenant().as_str() {
        return Err(Invalid::TenantMismatch);
    }
    let channel_ok = !event.channel.is_empty()
        && !RESERVED_EVENT_NAMES.contains(&&*event.channel)
        && (!strict_catalog || catalog::name_ok(&event.channel));
    if !channel_ok {
        return Err(Invalid::UnknownChannel);
    }
    Ok((Arc::from(epoch), offset, event))
}

impl Subscriber {
    /// Starts the subscriber task.
    pub fn start(
        settings: Arc<RedisSettings>,
        publisher: Publisher,
        deliveries: DeliverySender,
        max_room_len: usize,
        strict_catalog: bool,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| BusError::Config(format!("invalid REDIS_URL: {e}")))?;
        let me = Arc::new(Self {
            settings,
            wants: Mutex::default(),
            subscribed: Mutex::default(),
            changed: Notify::new(),
            confirmed: Notify::new(),
            up: AtomicBool::new(false),
            last: Mutex::default(),
            deliveries,
            max_room_len,
            strict_catalog,
        });
        if me.settings.is_cluster() {
            tokio::spawn(me.clone().run_sharded(publisher, shutdown));
        } else {
            tokio::spawn(me.clone().run(client, publisher, shutdown));
        }
        Ok(me)
    }

    /// Whether the subscription connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// `room` has members here.
    pub fn want(&self, room: &RoomKey) {
        let mut w = self.wants.lock();
        if w.wanted.insert(room.clone(), None) != Some(None) {
            w.to_subscribe.insert(room.clone());
            self.changed.notify_one();
        }
    }

    /// `room` has no member left here: release it after the delay.
    pub fn release(&self, room: &RoomKey) {
        let at = Instant::now() + self.settings.unsubscribe_delay;
        let mut w = self.wants.lock();
        if let Some(slot) = w.wanted.get_mut(room) {
            *slot = Some(at);
            w.releases.push_back((at, room.clone()));
        }
    }

    /// Waits until `room` is subscribed, up to `timeout`; false if it is not by then.
    pub async fn wait_subscribed(&self, room: &RoomKey, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.confirmed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.subscribed.lock().contains(room) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        client: redis::Client,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut first = true;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self
                .session(&client, &publisher, &shutdown, &mut backoff)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    let was_up = self.up.swap(false, Ordering::SeqCst);
                    ::metrics::gauge!(metrics::REDIS_UP).set(0.0);
                    self.subscribed.lock().clear();
                    ::metrics::gauge!(metrics::REDIS_SUBSCRIPTIONS).set(0.0);
                    if was_up || first {
                        tracing::warn!(error = %e, "Redis subscription lost; reconnecting");
                    } else {
                        tracing::debug!(error = %e, "Redis still unreachable");
                    }
                    first = false;
                }
            }
            if !back_off(&mut backoff, &shutdown).await {
                return;
            }
            ::metrics::counter!(metrics::REDIS_RECONNECTS).increment(1);
        }
    }

    /// One connected session: returns `Ok` on shutdown, `Err` when the connection is lost.
    async fn session(
        &self,
        client: &redis::Client,
        publisher: &Publisher,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let timeout = self.settings.timeout;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        // Redis may have restarted empty: make sure our function is there before we say ready.
        publisher.check_server().await.map_err(|e| e.to_string())?;
        let (mut sink, mut stream) = pubsub.split();
        {
            // A new connection has no subscription: everything wanted is to subscribe.
            let mut w = self.wants.lock();
            let all: Vec<RoomKey> = w.wanted.keys().cloned().collect();
            w.to_subscribe.extend(all);
        }
        self.reconcile(&mut sink).await?;
        // Messages that arrive meanwhile wait in the stream; the gap reads go first, so a room's
        // events stay in offset order and the duplicates check drops what both paths saw.
        self.heal_rooms(publisher, None).await;
        self.up.store(true, Ordering::SeqCst);
        ::metrics::gauge!(metrics::REDIS_UP).set(1.0);
        *backoff = BACKOFF_MIN;
        tracing::info!(
            rooms = self.subscribed.lock().len(),
            "Redis subscription ready"
        );
        let mut tick = tokio::time::interval(RECONCILE_TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(msg.get_channel_name(), msg.get_payload_bytes()).await,
                    None => return Err("connection closed".into()),
                },
                _ = self.changed.notified() => self.reconcile(&mut sink).await?,
                _ = tick.tick() => self.reconcile(&mut sink).await?,
            }
        }
    }

    /// Brings the connection's subscriptions in line with the wanted set.
    async fn reconcile(&self, sink: &mut redis::aio::PubSubSink) -> Result<(), String> {
        let (to_sub, to_unsub) = self.take_changes();
        let timed_out = |command: &str| format!("{command} timed out");
        for chunk in to_sub.chunks(BATCH) {
            let subscribed = sink.subscribe(self.channels(chunk));
            tokio::time::timeout(self.settings.timeout, subscribed)
                .await
                .map_err(|_| timed_out("SUBSCRIBE"))?
                .map_err(|e| e.to_string())?;
            self.subscribed.lock().extend(chunk.iter().cloned());
        }
        for chunk in to_unsub.chunks(BATCH) {
            let unsubscribed = sink.unsubscribe(self.channels(chunk));
            tokio::time::timeout(self.settings.timeout, unsubscribed)
                .await
                .map_err(|_| timed_out("UNSUBSCRIBE"))?
                .map_err(|e| e.to_string())?;
        }
        if !to_sub.is_empty() || !to_unsub.is_empty() {
            self.subscriptions_changed();
        }
        Ok(())
    }

    /// The pub/sub channels of `rooms`.
    fn channels<'a>(&self, rooms: impl IntoIterator<Item = &'a RoomKey>) -> Vec<String> {
        rooms
            .into_iter()
            .map(|r| self.settings.names(r).channel)
            .collect()
    }

    /// Tells waiters and the gauge that the subscribed set changed.
    fn subscriptions_changed(&self) {
        ::metrics::gauge!(metrics::REDIS_SUBSCRIPTIONS).set(self.subscribed.lock().len() as f64);
        self.confirmed.notify_waiters();
    }

    /// What to subscribe (wanted, not subscribed) and what to unsubscribe (released and due)
    /// now. Released rooms leave `subscribed` here, before their UNSUBSCRIBE goes out.
    fn take_changes(&self) -> (Vec<RoomKey>, Vec<RoomKey>) {
        let now = Instant::now();
        let mut w = self.wants.lock();
        let mut subscribed = self.subscribed.lock();
        let pending = std::mem::take(&mut w.to_subscribe);
        let to_sub: Vec<RoomKey> = pending
            .into_iter()
            .filter(|r| w.wanted.contains_key(r) && !subscribed.contains(r))
            .collect();
        let mut to_unsub = Vec::new();
        let mut last = self.last.lock();
        while let Some((_, room)) = w.releases.pop_front_if(|(t, _)| *t <= now) {
            // Wanted again since, or released again later: not due yet.
            if !matches!(w.wanted.get(&room), Some(Some(t)) if *t <= now) {
                continue;
            }
            w.wanted.remove(&room);
            // Stop counting it as subscribed before the UNSUBSCRIBE goes out, so a socket
            // that enters it meanwhile waits for the next SUBSCRIBE instead of trusting a
            // subscription that is about to end.
            if subscribed.remove(&room) {
                last.remove(&room);
                to_unsub.push(room);
            }
        }
        (to_sub, to_unsub)
    }

    /// After a reconnect: for every room relayed before (`only` these when given), reads what
    /// was published while this gateway was cut off and relays it; a room whose history was
    /// lost gets a resync.
    async fn heal_rooms(&self, publisher: &Publisher, only: Option<&HashSet<RoomKey>>) {
        let rooms: Vec<(RoomKey, (Arc<str>, u64))> = {
            let subscribed = self.subscribed.lock();
            self.last
                .lock()
                .iter()
                .filter(|(room, _)| subscribed.contains(*room))
                .filter(|(room, _)| only.is_none_or(|o| o.contains(*room)))
                .map(|(room, pos)| (room.clone(), pos.clone()))
                .collect()
        };
        for (room, (epoch, offset)) in rooms {
            let since = Position { epoch, offset };
            match publisher
                .recover(&room, &since, self.settings.history_max_len)
                .await
            {
                Ok(Recovery::Replay { events, .. }) => {
                    ::metrics::counter!(metrics::GAP_READS, "result" => "recovered").increment(1);
                    if !events.is_empty() {
                        tracing::info!(%room, events = events.len(), "relaying events missed while Redis was unreachable");
                    }
                    for (offset, event) in events {
                        self.deliver(room.clone(), since.epoch.clone(), offset, event)
                            .await;
                    }
                }
                Ok(Recovery::Lost { reason, now }) => {
                    ::metrics::counter!(metrics::GAP_READS, "result" => reason.as_str())
                        .increment(1);
                    tracing::warn!(%room, reason = reason.as_str(), "history lost while Redis was unreachable; asking clients to resync");
                    self.last
                        .lock()
                        .insert(room.clone(), (now.epoch.clone(), now.offset));
                    let _ = self
                        .deliveries
                        .send(BusMessage::Resync { key: room, now })
                        .await;
                }
                Err(e) => {
                    ::metrics::counter!(metrics::GAP_READS, "result" => "error").increment(1);
                    tracing::warn!(%room, error = %e, "gap read failed; live delivery resumes without it");
                }
            }
        }
    }

    /// Relays one event unless its offset was relayed already.
    async fn deliver(&self, room: RoomKey, epoch: Arc<str>, offset: u64, event: Arc<Event>) {
        let restarted = {
            let mut last = self.last.lock();
            if last
                .get(&room)
                .is_some_and(|(e, o)| *e == epoch && offset <= *o)
            {
                ::metrics::counter!(metrics::BUS_DUPLICATES).increment(1);
                return;
            }
            let previous = last.insert(room.clone(), (epoch.clone(), offset));
            previous.is_some_and(|(e, _)| e != epoch)
        };
        if restarted {
            // A new epoch arrived live without a gap read saying so (the read failed during a
            // failover): the history restarted, so the room's clients must refetch before
            // they take offsets of the new epoch.
            tracing::warn!(%room, "room's history restarted (new epoch); asking clients to resync");
            let now = Position {
                epoch: epoch.clone(),
                offset: offset - 1,
            };
            let resync = BusMessage::Resync {
                key: room.clone(),
                now,
            };
            let _ = self.deliveries.send(resync).await;
        }
        let delivery = Delivery {
            key: room,
            offset,
            epoch,
            event,
        };
        if self
            .deliveries
            .send(BusMessage::Event(delivery))
            .await
            .is_err()
        {
            tracing::debug!("relay stopped; dropping bus message");
        }
    }

    async fn on_message(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.settings.room_of_channel(channel, self.max_room_len) else {
            ::metrics::counter!(metrics::BUS_INVALID, "reason" => "unknown_room").increment(1);
            tracing::warn!(channel, "message on a channel that is not a room; dropped");
            return;
        };
        let (epoch, offset, event) = match parse_message(&room, payload, self.strict_catalog) {
            Ok(parsed) => parsed,
            Err(reason) => {
                ::metrics::counter!(metrics::BUS_INVALID, "reason" => reason.label()).increment(1);
                tracing::warn!(%room, reason = reason.label(), bytes = payload.len(), "invalid message on the bus; dropped");
                return;
            }
        };
        self.deliver(room, epoch, offset, Arc::new(event)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RoomName, TenantId};

    fn room(t: &str) -> RoomKey {
        RoomKey::new(
            TenantId::parse(t).unwrap(),
            RoomName::parse("batch:1", 64).unwrap(),
        )
    }

    const BODY: &str = r#"{"id":"e1","channel":"incident","event":"incident_reported","institutionId":"1","payload":{"a":1},"timestamp":5}"#;

    #[test]
    fn parses_valid_frames() {
        let (epoch, offset, ev) =
            parse_message(&room("1"), format!("7|e9|{BODY}").as_bytes(), true).unwrap();
        assert_eq!((&*epoch, offset, &*ev.id), ("e9", 7, "e1"));
        assert_eq!(ev.payload.get(), r#"{"a":1}"#);
    }

    #[test]
    fn rejects_bad_frames_with_reasons() {
        let r = room("1");
        assert_eq!(
            parse_message(&r, b"garbage", true).unwrap_err(),
            Invalid::BadFrame
        );
        assert_eq!(
            parse_message(&r, b"x|e|{}", true).unwrap_err(),
            Invalid::BadFrame
        );
        assert_eq!(
            parse_message(&r, b"1|e|{\"id\":1}", true).unwrap_err(),
            Invalid::BadEnvelope
        );
        assert_eq!(
            parse_message(&room("2"), format!("1|e|{BODY}").as_bytes(), true).unwrap_err(),
            Invalid::TenantMismatch
        );
        // Another gateway's catalog may have channels this one does not know: relayed.
        let custom = BODY.replace("\"incident\"", "\"custom_feed\"");
        assert!(parse_message(&r, format!("1|e|{custom}").as_bytes(), true).is_ok());
        let malformed = BODY.replace("\"incident\"", "\"Custom Feed\"");
        assert_eq!(
            parse_message(&r, format!("1|e|{malformed}").as_bytes(), true).unwrap_err(),
            Invalid::UnknownChannel
        );
        assert!(parse_message(&r, format!("1|e|{malformed}").as_bytes(), false).is_ok());
        let reserved = BODY.replace("\"incident\"", "\"connect\"");
        assert_eq!(
            parse_message(&r, format!("1|e|{reserved}").as_bytes(), false).unwrap_err(),
            Invalid::UnknownChannel
        );
    }

    #[test]
    fn channel_names_round_trip() {
        let s = RedisSettings {
            url: "redis://x".into(),
            cluster_nodes: Vec::new(),
            prefix: "rtg".into(),
            history_max_len: 10,
            history_ttl: Duration::from_secs(10),
            pool_size: 1,
            timeout: Duration::from_secs(1),
            unsubscribe_delay: Duration::from_secs(1),
        };
        let r = room("1");
        let names = s.names(&r);
        assert_eq!(names.channel, "rtg:{1/batch:1}");
        assert_eq!(names.stream, "rtg:{1/batch:1}:h");
        assert_eq!(s.room_of_channel(&names.channel, 64), Some(r));
        assert_eq!(s.room_of_channel("other:{1/batch:1}", 64), None);
    }
}
