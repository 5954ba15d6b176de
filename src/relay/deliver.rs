//! Writing to sockets: live events encoded once and handed to a room's members, replays
//! spliced in front of live delivery, and slow consumers cut.

use std::sync::Arc;

use serde_json::json;

use super::{Finished, Pending, RESYNC};
use crate::bus::Delivery;
use crate::events::{Event, RoomKey};
use crate::metrics;
use crate::peer::{Outgoing, Peer, PeerId, Sent, SharedFrames};

/// The client envelope of a live event, encoded once.
pub(super) fn encode(d: &Delivery) -> Option<Outgoing> {
    let envelope = d.event.client_envelope(d.key.room(), d.offset);
    match serde_json::value::to_raw_value(&envelope) {
        Ok(raw) => Some(Outgoing::new(d.event.channel.clone(), raw)),
        Err(e) => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
            tracing::error!(room = %d.key, error = %e, "event could not be encoded");
            None
        }
    }
}

/// Hands events to every member (but those in each event's skip list). When nobody is
/// skipped, a WebSocket member gets all of them in one write.
pub(super) fn deliver(key: &RoomKey, members: &[Peer], events: &[Outgoing], skips: &[Vec<PeerId>]) {
    // The common case: nobody to skip, so every member gets the same bytes and no member's id
    // is looked at (each look is a cache miss per delivery). The bytes come in up to four
    // shapes (JSON or MessagePack, plain or compressed), each made once for the whole room.
    let together = skips.iter().all(Vec::is_empty);
    let mut shared = together.then(SharedFrames::default);
    let mut sent = 0u64;
    for peer in members {
        let result = match shared.as_mut() {
            Some(shared) => peer.send_all(shared, events),
            None => {
                let id = peer.id();
                let mut result = Sent::Ok;
                for (ev, skip) in events.iter().zip(skips) {
                    if skip.contains(&id) {
                        continue;
                    }
                    result = peer.send(ev);
                    if result != Sent::Ok {
                        break;
                    }
                }
                result
            }
        };
        match result {
            Sent::Ok => sent += 1,
            Sent::Full => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full")
                    .increment(1);
                cut_slow_consumer(peer, key);
            }
            Sent::Closed => {
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed").increment(1);
                tracing::debug!(peer = peer.id(), room = %key, "socket gone before delivery");
            }
        }
    }
    if let Some(first) = events.first() {
        let channel = metrics::channel_label(&first.name);
        ::metrics::counter!(metrics::EVENTS_DELIVERED, "channel" => channel)
            .increment(sent * events.len() as u64);
    }
}

/// Replay, then buffered live events past it, then membership: one uninterrupted step.
/// Returns what was sent and the offset the socket now has everything up to.
pub(super) fn splice(
    peer: &Peer,
    key: &RoomKey,
    after: u64,
    replay: Vec<(u64, Arc<Event>)>,
    p: Pending,
) -> (Finished, u64) {
    let mut out = Finished::default();
    let mut last = after;
    for (offset, event) in replay.iter().filter(|(o, _)| *o > after) {
        if !send_one(peer, key, *offset, event) {
            // Cut or gone: it will come back and recover from its own position.
            return (out, last);
        }
        last = *offset;
        out.replayed += 1;
    }
    if p.overflowed {
        out.overflowed = true;
        ::metrics::counter!(metrics::RESYNCS).increment(1);
        peer.emit(
            RESYNC,
            &json!({ "room": key.room(), "reason": "buffer_overflow" }),
        );
    } else {
        // Buffered events arrive in offset order; skip what the replay already covered.
        for d in p.buffer.iter() {
            if d.offset > last {
                if !send_one(peer, key, d.offset, &d.event) {
                    return (out, last);
                }
                last = d.offset;
                out.buffered += 1;
            }
        }
    }
    tracing::debug!(peer = peer.id(), room = %key, after, replayed = out.replayed, buffered = out.buffered, last, "room entered");
    (out, last)
}

/// Sends one event to one socket; false if the socket had to be cut (buffer full) or is gone.
fn send_one(peer: &Peer, key: &RoomKey, offset: u64, event: &Event) -> bool {
    let envelope = event.client_envelope(key.room(), offset);
    let Ok(raw) = serde_json::value::to_raw_value(&envelope) else {
        ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode").increment(1);
        return false;
    };
    match peer.send_replay(&Outgoing::new(event.channel.clone(), raw)) {
        Sent::Ok => true,
        Sent::Full => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "buffer_full").increment(1);
            cut_slow_consumer(peer, key);
            false
        }
        Sent::Closed => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "closed").increment(1);
            tracing::debug!(peer = peer.id(), room = %key, offset, "replayed event not sent");
            false
        }
    }
}

/// A socket whose outgoing buffer is full cannot keep up: cut it rather than let it slow the
/// others or grow memory. Its transport is cut, which the stock client treats as a lost
/// transport: it reconnects and recovers what it missed from history.
fn cut_slow_consumer(peer: &Peer, key: &RoomKey) {
    if peer.cut() {
        tracing::debug!(peer = peer.id(), room = %key, "slow consumer cut while relaying");
    }
}
