//! The local members of one room, and whether a socket should be among them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::Position;
use crate::events::RoomKey;
use crate::peer::{Peer, PeerId};

/// Rooms at most this big are searched by walking their list; bigger ones keep an index.
const SMALL_ROOM: usize = 32;

/// The local members of one room: a list to walk and, once the room is big, an index to remove
/// from it in O(1). Most rooms are one user's own room with one socket: no index, no spare
/// capacity.
#[derive(Default)]
pub(super) struct Members {
    pub(super) list: Vec<Peer>,
    index: Option<HashMap<PeerId, usize>>,
    /// Where the room stands as far as the relay knows: the newest of the last event relayed
    /// and the positions members entered at. Every later event comes through the relay while
    /// the room has members.
    pub(super) head: Option<Position>,
}

impl Members {
    /// Raises the known head to `(epoch, offset)`; an epoch that disagrees makes it unknown.
    pub(super) fn saw(&mut self, epoch: &Arc<str>, offset: u64) {
        self.head = match self.head.take() {
            None => Some(Position {
                epoch: epoch.clone(),
                offset,
            }),
            Some(h) if h.epoch == *epoch => Some(Position {
                offset: h.offset.max(offset),
                ..h
            }),
            Some(_) => None,
        };
    }

    fn position(&self, id: PeerId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self.list.iter().position(|p| p.id() == id),
        }
    }

    pub(super) fn contains(&self, id: PeerId) -> bool {
        self.position(id).is_some()
    }

    pub(super) fn insert(&mut self, peer: Peer) {
        let id = peer.id();
        if self.position(id).is_some() {
            return;
        }
        if self.list.capacity() == 0 {
            self.list.reserve_exact(1);
        }
        self.list.push(peer);
        match &mut self.index {
            Some(index) => {
                index.insert(id, self.list.len() - 1);
            }
            None if self.list.len() > SMALL_ROOM => {
                let index = self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.id(), i))
                    .collect();
                self.index = Some(index);
            }
            None => {}
        }
    }

    pub(super) fn remove(&mut self, id: PeerId) {
        let Some(i) = self.position(id) else { return };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&id);
            if let Some(moved) = self.list.get(i) {
                index.insert(moved.id(), i);
            }
        }
    }
}

/// Whether `peer` should be in `key` now: connected, authenticated in the room's tenant, and
/// the room is one of its automatic rooms or one it joined and has not left. Checked under the
/// session's lock when the relay adds a member; `leave`, `refresh` and disconnects change the
/// session before they tell the relay, so a join whose entry is overtaken by its own leave (or
/// by a disconnect) never lands.
pub(super) fn wants(peer: &Peer, key: &RoomKey) -> bool {
    if !peer.is_open() {
        return false;
    }
    let state = peer.session().state();
    state
        .auth()
        .is_some_and(|a| a.identity.tenant == *key.tenant() && a.is_in(key.room()))
}
