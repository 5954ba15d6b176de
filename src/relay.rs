//! The relay: takes each [`Delivery`] from the bus and hands it to the local sockets in its room.
//!
//! The envelope is serialized once per event and room; Socket.IO's adapter then writes the same
//! encoded packet to every member.

use std::sync::Arc;

use socketioxide::{BroadcastError, SocketError, SocketIo};
use tokio::sync::mpsc;

use crate::bus::Delivery;
use crate::events::envelope::now_millis;
use crate::metrics;
use crate::state::AppState;

/// Relays deliveries until the bus closes the channel.
pub async fn run(io: SocketIo, state: Arc<AppState>, mut deliveries: mpsc::Receiver<Delivery>) {
    while let Some(d) = deliveries.recv().await {
        relay_one(&io, &state, d).await;
    }
}

async fn relay_one(io: &SocketIo, state: &AppState, d: Delivery) {
    let channel = metrics::channel_label(&d.event.channel);
    ::metrics::counter!(metrics::EVENTS_RECEIVED, "channel" => channel).increment(1);
    let members = state.membership.members(&d.key);
    if members == 0 {
        return;
    }
    let envelope = d.event.client_envelope(d.key.room(), d.offset);
    let failed = match io
        .to(d.key.as_str().to_owned())
        .emit(&*d.event.channel, &envelope)
        .await
    {
        Ok(()) => 0,
        Err(BroadcastError::Socket(errors)) => {
            for e in &errors {
                let reason = match e {
                    SocketError::InternalChannelFull => "buffer_full",
                    SocketError::Closed => "closed",
                };
                ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => reason).increment(1);
            }
            tracing::warn!(room = %d.key, failed = errors.len(), "some sockets could not take an event");
            errors.len()
        }
        Err(e) => {
            ::metrics::counter!(metrics::DELIVERY_FAILURES, "reason" => "encode")
                .increment(members as u64);
            tracing::error!(room = %d.key, error = %e, "event could not be relayed");
            members
        }
    };
    ::metrics::counter!(metrics::EVENTS_DELIVERED, "channel" => channel)
        .increment(members.saturating_sub(failed) as u64);
    let lag_ms = (now_millis() - d.event.timestamp).max(0);
    ::metrics::histogram!(metrics::DELIVERY_LAG).record(lag_ms as f64 / 1000.0);
}
