//! The subscriber on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`) on the primary that owns
//! each room's slot, with the subscriber's own slot map.
//!
//! One RESP3 connection per primary carries that primary's subscriptions; its pushes (messages,
//! confirmations, `sunsubscribe`s, the library's disconnection notice) come into one queue
//! tagged with the connection. Each room is subscribed with its own one-channel `SSUBSCRIBE`,
//! pipelined per node in slot order, so a command never spans slots (`CROSSSLOT`) and every
//! confirmation is matched to its channel.
//!
//! A room leaves its node when the server unsubscribes it (its slot migrated), when the node
//! answers `MOVED`, when the node's connection is lost, or when the slot map read every second
//! names another owner. It is then subscribed again on the new owner and, before any further
//! message is handled, the gap read fetches what was published meanwhile: a slot move or a
//! failover loses nothing that reached the history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{back_off, Subscriber, BACKOFF_MIN, BATCH, RECONCILE_TICK};
use crate::bus::redis::topology::{self, SlotMap};
use crate::bus::redis::Publisher;
use crate::events::RoomKey;
use crate::metrics;

/// How often the slot map is read again, to notice an owner change that came without a
/// `sunsubscribe` (a failover) and primaries that joined.
const MAP_REFRESH: Duration = Duration::from_secs(1);

/// One primary's subscription connection.
struct Node {
    /// Tag of this connection's pushes.
    id: u64,
    conn: MultiplexedConnection,
    /// Rooms subscribed on it.
    rooms: HashSet<RoomKey>,
}

/// The subscriber task's view of the cluster; only that task touches it, so no lock.
struct Shards {
    map: Option<SlotMap>,
    /// Primaries of the last map (their function library was checked).
    primaries: BTreeSet<String>,
    /// Subscription connections by `host:port`.
    nodes: HashMap<String, Node>,
    /// Where each subscribed room is subscribed.
    placed: HashMap<RoomKey, String>,
    /// Wanted rooms not subscribed anywhere now.
    pending: HashSet<RoomKey>,
    /// Rooms to gap-read once subscribed again.
    gaps: HashSet<RoomKey>,
    next_id: u64,
    pushes: mpsc::UnboundedSender<(u64, PushInfo)>,
    /// The slot map must be read again before the next subscribe.
    stale: bool,
    /// Nodes whose last subscribe failed (warned once until one succeeds).
    failing: HashSet<String>,
}

/// What a node answered to one `SSUBSCRIBE`.
enum Answer {
    Confirmed,
    /// The slot is served elsewhere now (or the cluster is reconfiguring): read the map again.
    Elsewhere,
    /// Not a confirmation of this channel: the connection's replies are out of step.
    Confused,
}

fn answer(reply: &Value, channel: &str) -> Answer {
    match reply {
        Value::Push {
            kind: PushKind::SSubscribe,
            data,
        } if matches!(data.first(), Some(Value::BulkString(c)) if c == channel.as_bytes()) => {
            Answer::Confirmed
        }
        Value::ServerError(e)
            if matches!(
                e.code(),
                "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"
            ) =>
        {
            Answer::Elsewhere
        }
        _ => Answer::Confused,
    }
}

fn channel_of(push: &PushInfo) -> Option<&str> {
    match push.data.first() {
        Some(Value::BulkString(c)) => std::str::from_utf8(c).ok(),
        _ => None,
    }
}

impl Shards {
    /// Forgets `room`'s subscription; it is subscribed again (and gap-read) if still wanted.
    fn unplace(&mut self, sub: &Subscriber, room: &RoomKey) {
        if let Some(address) = self.placed.remove(room) {
            if let Some(node) = self.nodes.get_mut(&address) {
                node.rooms.remove(room);
            }
        }
        sub.subscribed.lock().remove(room);
        if sub.wants.lock().wanted.contains_key(room) {
            self.pending.insert(room.clone());
            self.gaps.insert(room.clone());
        }
    }

    /// Drops the connection to `address`: its rooms go back to pending.
    fn drop_node(&mut self, sub: &Subscriber, address: &str) {
        if let Some(node) = self.nodes.remove(address) {
            for room in &node.rooms {
                self.unplace(sub, room);
            }
            self.stale = true;
            sub.subscriptions_changed();
        }
    }

    /// Ends the subscriptions of `channels` on `address`; drops the connection (false) if the
    /// node does not take the commands.
    async fn sunsubscribe(&mut self, sub: &Subscriber, address: &str, channels: &[String]) -> bool {
        let Some(node) = self.nodes.get_mut(address) else {
            return true;
        };
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("SUNSUBSCRIBE").arg(channel);
        }
        pipe.ignore_errors();
        let sent = tokio::time::timeout(
            sub.settings.timeout,
            pipe.query_async::<Vec<Value>>(&mut node.conn),
        )
        .await;
        let ok = matches!(sent, Ok(Ok(_)));
        if !ok {
            self.drop_node(sub, address);
        }
        ok
    }

    fn address_of_id(&self, id: u64) -> Option<String> {
        self.nodes
            .iter()
            .find_map(|(a, n)| (n.id == id).then(|| a.clone()))
    }
}

impl Subscriber {
    /// The cluster counterpart of `run`: follows the slot map and keeps every wanted room
    /// subscribed on its slot's primary until shutdown.
    pub(super) async fn run_sharded(
        self: Arc<Self>,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sh = Shards {
            map: None,
            primaries: BTreeSet::new(),
            nodes: HashMap::new(),
            placed: HashMap::new(),
            pending: HashSet::new(),
            gaps: HashSet::new(),
            next_id: 0,
            pushes: tx,
            stale: true,
            failing: HashSet::new(),
        };
        let seeds: Vec<String> = self
            .settings
            .cluster_nodes
            .iter()
            .filter_map(|u| topology::address_of(u))
            .collect();
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        let mut tick = tokio::time::interval(RECONCILE_TICK);
        let mut refresh = tokio::time::interval(MAP_REFRESH);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if sh.stale {
                match self.refresh_map(&mut sh, &publisher, &seeds).await {
                    Ok(()) => {
                        backoff = BACKOFF_MIN;
                        if warned {
                            tracing::info!("Redis Cluster reachable again");
                            warned = false;
                        }
                    }
                    Err(e) => {
                        self.up.store(false, Ordering::SeqCst);
                        ::metrics::gauge!(metrics::REDIS_UP).set(0.0);
                        if !warned {
                            tracing::warn!(error = %e, "cannot read the Redis Cluster slot map; retrying");
                            warned = true;
                        }
                        if !back_off(&mut backoff, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            self.reconcile_sharded(&mut sh).await;
            self.heal_moved(&mut sh, &publisher).await;
            let up = sh.map.is_some();
            if self.up.swap(up, Ordering::SeqCst) != up {
                ::metrics::gauge!(metrics::REDIS_UP).set(if up { 1.0 } else { 0.0 });
                if up {
                    tracing::info!(
                        primaries = sh.primaries.len(),
                        "Redis Cluster subscription ready"
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                push = rx.recv() => {
                    if let Some((id, push)) = push {
                        self.on_push(&mut sh, id, push).await;
                    }
                }
                _ = self.changed.notified() => {}
                _ = tick.tick() => {}
                _ = refresh.tick() => sh.stale = true,
            }
        }
    }

    /// Reads the slot map, loads the function library on new primaries, and moves rooms whose
    /// slot has another owner now.
    async fn refresh_map(
        &self,
        sh: &mut Shards,
        publisher: &Publisher,
        seeds: &[String],
    ) -> Result<(), String> {
        let mut candidates: Vec<String> = sh.primaries.iter().cloned().collect();
        candidates.extend(seeds.iter().filter(|s| !sh.primaries.contains(*s)).cloned());
        let map = topology::fetch(&self.settings.url, &candidates, self.settings.timeout).await?;
        let primaries = map.primaries();
        for address in primaries.difference(&sh.primaries) {
            if let Err(e) = publisher.ensure_function_on(address).await {
                tracing::warn!(node = %address, error = %e, "cannot load the function library on a new primary; publishes to it fail until it can");
            }
        }
        let moved: Vec<(RoomKey, String)> = sh
            .placed
            .iter()
            .filter(|(room, at)| {
                let slot = topology::slot_of(&self.settings.names(room).channel);
                map.owner(slot) != Some(at.as_str())
            })
            .map(|(room, at)| (room.clone(), at.clone()))
            .collect();
        let mut stale_subscriptions: HashMap<String, Vec<String>> = HashMap::new();
        for (room, at) in &moved {
            tracing::info!(%room, from = %at, "room's slot has a new owner; subscribing there");
            sh.unplace(self, room);
            stale_subscriptions
                .entry(at.clone())
                .or_default()
                .push(self.settings.names(room).channel);
        }
        // The old owner might keep the subscription; end it so the room has one source.
        for (address, channels) in stale_subscriptions {
            sh.sunsubscribe(self, &address, &channels).await;
        }
        if !moved.is_empty() {
            self.subscriptions_changed();
        }
        // Connections to nodes that are no longer primaries and carry nothing.
        sh.nodes
            .retain(|address, node| primaries.contains(address) || !node.rooms.is_empty());
        sh.primaries = primaries;
        sh.map = Some(map);
        sh.stale = false;
        Ok(())
    }

    /// A subscription connection to `address`, opened if needed.
    async fn node<'a>(&self, sh: &'a mut Shards, address: &str) -> Result<&'a mut Node, String> {
        if !sh.nodes.contains_key(address) {
            sh.next_id += 1;
            let id = sh.next_id;
            let pushes = sh.pushes.clone();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.settings.timeout))
                .set_response_timeout(Some(self.settings.timeout))
                .set_push_sender(move |push: PushInfo| pushes.send((id, push)));
            let client = topology::node_client(&self.settings.url, address, true)?;
            let conn = tokio::time::timeout(
                self.settings.timeout,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await
            .map_err(|_| format!("{address}: connect timed out"))?
            .map_err(|e| format!("{address}: {e}"))?;
            ::metrics::counter!(metrics::REDIS_RECONNECTS).increment(1);
            sh.nodes.insert(
                address.to_string(),
                Node {
                    id,
                    conn,
                    rooms: HashSet::new(),
                },
            );
        }
        sh.nodes
            .get_mut(address)
            .ok_or_else(|| format!("{address}: no connection"))
    }

    /// Subscribes pending rooms on their slots' primaries and unsubscribes released ones.
    async fn reconcile_sharded(&self, sh: &mut Shards) {
        let (to_sub, to_unsub) = self.take_changes();
        let mut changed = !to_unsub.is_empty();
        sh.pending.extend(to_sub);
        {
            let wants = self.wants.lock();
            sh.pending.retain(|r| wants.wanted.contains_key(r));
            sh.gaps.retain(|r| wants.wanted.contains_key(r));
        }

        let mut leaving: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for room in &to_unsub {
            if let Some(address) = sh.placed.remove(room) {
                if let Some(node) = sh.nodes.get_mut(&address) {
                    node.rooms.remove(room);
                }
                leaving
                    .entry(address)
                    .or_default()
                    .push(self.settings.names(room).channel);
            }
        }
        for (address, channels) in leaving {
            for chunk in channels.chunks(BATCH) {
                if !sh.sunsubscribe(self, &address, chunk).await {
                    break;
                }
            }
        }

        let Some(map) = sh.map.clone() else {
            if changed {
                self.subscriptions_changed();
            }
            return;
        };
        // Pending rooms by owner, each node's in slot order.
        let mut by_node: BTreeMap<String, Vec<(u16, RoomKey)>> = BTreeMap::new();
        for room in &sh.pending {
            let slot = topology::slot_of(&self.settings.names(room).channel);
            match map.owner(slot) {
                Some(owner) => by_node
                    .entry(owner.to_string())
                    .or_default()
                    .push((slot, room.clone())),
                None => sh.stale = true,
            }
        }
        for (address, mut rooms) in by_node {
            rooms.sort_by_key(|(slot, _)| *slot);
            for chunk in rooms.chunks(BATCH) {
                match self.subscribe_on(sh, &address, chunk).await {
                    Ok(n) => {
                        changed |= n > 0;
                        sh.failing.remove(&address);
                    }
                    Err(e) => {
                        // A dead primary fails every tick until its replica takes over: say it once.
                        if sh.failing.insert(address.clone()) {
                            tracing::warn!(node = %address, error = %e, "sharded subscribe failed; retrying until the slot has a reachable owner");
                        }
                        sh.drop_node(self, &address);
                        sh.stale = true;
                        break;
                    }
                }
            }
        }
        if changed {
            self.subscriptions_changed();
        }
    }

    /// Sends one `SSUBSCRIBE` per room to `address` in one pipeline; returns how many were
    /// confirmed. An error means the connection must be dropped.
    async fn subscribe_on(
        &self,
        sh: &mut Shards,
        address: &str,
        rooms: &[(u16, RoomKey)],
    ) -> Result<usize, String> {
        let channels = self.channels(rooms.iter().map(|(_, r)| r));
        let mut pipe = redis::pipe();
        for channel in &channels {
            pipe.cmd("SSUBSCRIBE").arg(channel);
        }
        pipe.ignore_errors();
        let node = self.node(sh, address).await?;
        let replies = tokio::time::timeout(
            self.settings.timeout,
            pipe.query_async::<Vec<Value>>(&mut node.conn),
        )
        .await
        .map_err(|_| "SSUBSCRIBE timed out".to_string())?
        .map_err(|e| e.to_string())?;
        if replies.len() != rooms.len() {
            return Err(format!(
                "{} replies to {} SSUBSCRIBE commands",
                replies.len(),
                rooms.len()
            ));
        }
        let mut confirmed = 0;
        let mut confused = false;
        for (((_, room), channel), reply) in rooms.iter().zip(&channels).zip(&replies) {
            match answer(reply, channel) {
                Answer::Confirmed => {
                    if let Some(node) = sh.nodes.get_mut(address) {
                        node.rooms.insert(room.clone());
                    }
                    sh.placed.insert(room.clone(), address.to_string());
                    sh.pending.remove(room);
                    self.subscribed.lock().insert(room.clone());
                    confirmed += 1;
                }
                Answer::Elsewhere => sh.stale = true,
                Answer::Confused => confused = true,
            }
        }
        if confused {
            // An unrequested push (a slot just moved away) was taken for a reply: start afresh
            // on this node rather than trust its replies.
            return Err("a reply did not confirm its SSUBSCRIBE".into());
        }
        Ok(confirmed)
    }

    /// Gap-reads the rooms that were subscribed again since they left their node.
    async fn heal_moved(&self, sh: &mut Shards, publisher: &Publisher) {
        let ready: HashSet<RoomKey> = sh.gaps.extract_if(|r| sh.placed.contains_key(r)).collect();
        if !ready.is_empty() {
            self.heal_rooms(publisher, Some(&ready)).await;
        }
    }

    async fn on_push(&self, sh: &mut Shards, id: u64, push: PushInfo) {
        // Pushes of a connection already dropped: its rooms are subscribed again elsewhere and
        // gap-read, so what it still carries is either read already or will be.
        let Some(address) = sh.address_of_id(id) else {
            return;
        };
        match push.kind {
            PushKind::SMessage => {
                let (Some(channel), Some(Value::BulkString(payload))) =
                    (channel_of(&push), push.data.get(1))
                else {
                    return;
                };
                self.on_message(channel, payload).await;
            }
            PushKind::SUnsubscribe => {
                let Some(room) = channel_of(&push)
                    .and_then(|c| self.settings.room_of_channel(c, self.max_room_len))
                else {
                    return;
                };
                // Ours only if the room is still placed on that node: then the server ended it.
                if sh.placed.get(&room) == Some(&address) {
                    tracing::info!(%room, node = %address, "the server ended a sharded subscription (slot moved); subscribing on the new owner");
                    sh.unplace(self, &room);
                    sh.stale = true;
                    self.subscriptions_changed();
                }
            }
            PushKind::Disconnection => {
                tracing::warn!(node = %address, "lost the connection to a Redis Cluster primary; subscribing its rooms again");
                sh.drop_node(self, &address);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmation(kind: PushKind, channel: &str) -> Value {
        Value::Push {
            kind,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::Int(1),
            ],
        }
    }

    #[test]
    fn only_a_confirmation_of_the_same_channel_counts() {
        let ch = "rtg:{1/batch:1}";
        assert!(matches!(
            answer(&confirmation(PushKind::SSubscribe, ch), ch),
            Answer::Confirmed
        ));
        // Another channel's confirmation, or an unrequested sunsubscribe taken for a reply.
        assert!(matches!(
            answer(&confirmation(PushKind::SSubscribe, "rtg:{1/batch:2}"), ch),
            Answer::Confused
        ));
        assert!(matches!(
            answer(&confirmation(PushKind::SUnsubscribe, ch), ch),
            Answer::Confused
        ));
        assert!(matches!(answer(&Value::Okay, ch), Answer::Confused));
    }
}
