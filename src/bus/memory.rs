//! The embedded bus: one process, no Redis. Same contract as the Redis bus: contiguous offsets
//! per room starting at 1, deliveries in offset order.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Mutex;

use super::{Bus, BusError, Delivery, DeliverySender};
use crate::events::{Event, RoomKey};

/// In-process bus for a single gateway.
pub struct MemoryBus {
    /// Last offset per room. A tokio mutex because it is held while the delivery is queued:
    /// that keeps deliveries in offset order when several publishers race on one room.
    offsets: Mutex<HashMap<RoomKey, u64>>,
    deliveries: DeliverySender,
}

impl MemoryBus {
    /// A bus that hands every published event to `deliveries`.
    pub fn new(deliveries: DeliverySender) -> Self {
        Self {
            offsets: Mutex::new(HashMap::new()),
            deliveries,
        }
    }
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        event: Arc<Event>,
        rooms: Vec<RoomKey>,
    ) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        async move {
            let mut offsets = self.offsets.lock().await;
            let mut out = Vec::with_capacity(rooms.len());
            for key in rooms {
                let slot = offsets.entry(key.clone()).or_insert(0);
                *slot += 1;
                let offset = *slot;
                self.deliveries
                    .send(Delivery {
                        key,
                        offset,
                        event: event.clone(),
                    })
                    .await
                    .map_err(|_| BusError::Unavailable("the gateway is shutting down".into()))?;
                out.push(offset);
            }
            Ok(out)
        }
        .boxed()
    }

    fn subscribe(&self, _room: &RoomKey) {}

    fn unsubscribe(&self, _room: &RoomKey) {}

    fn is_ready(&self) -> bool {
        !self.deliveries.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RoomName, TenantId};
    use serde_json::value::RawValue;

    fn event(id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: id.into(),
            channel: "incident".into(),
            event: "incident_reported".into(),
            tenant: "1".into(),
            payload: RawValue::from_string("{}".into()).unwrap(),
            timestamp: 0,
        })
    }

    #[tokio::test]
    async fn offsets_are_contiguous_per_room() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let bus = MemoryBus::new(tx);
        let t = TenantId::parse("1").unwrap();
        let a = RoomKey::new(t.clone(), RoomName::parse("batch:1", 64).unwrap());
        let b = RoomKey::new(t, RoomName::parse("batch:2", 64).unwrap());
        assert_eq!(
            bus.publish(event("e1"), vec![a.clone(), b.clone()])
                .await
                .unwrap(),
            vec![1, 1]
        );
        assert_eq!(
            bus.publish(event("e2"), vec![a.clone()]).await.unwrap(),
            vec![2]
        );
        let got: Vec<(String, u64)> = (0..3)
            .map(|_| rx.try_recv().unwrap())
            .map(|d| (d.key.to_string(), d.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1/batch:1".into(), 1),
                ("1/batch:2".into(), 1),
                ("1/batch:1".into(), 2)
            ]
        );
    }
}
