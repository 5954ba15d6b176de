//! What a WebSocket session agreed to at its handshake: the Socket.IO parser (JSON text, or
//! MessagePack with `parser=msgpack` in the query) and permessage-deflate; and the gateway's own
//! packets encoded for it.

use std::num::NonZeroU32;

use bytes::Bytes;
use serde::Serialize;

use super::{msgpack, packet};

/// A session's encoding. Small and `Copy`: it sits in every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Codec {
    /// Socket.IO packets are MessagePack (binary messages) instead of JSON text.
    pub msgpack: bool,
    /// permessage-deflate was negotiated: messages of at least this many bytes go compressed.
    pub deflate_min: Option<NonZeroU32>,
}

/// A packet that could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// As JSON.
    #[error("JSON encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// As MessagePack.
    #[error("MessagePack encoding: {0}")]
    MsgPack(#[from] msgpack::EncodeError),
}

impl Codec {
    /// A session with `msgpack`, compressing from `deflate_min` bytes when negotiated.
    pub fn new(msgpack: bool, deflate_min: Option<u32>) -> Self {
        Self {
            msgpack,
            deflate_min: deflate_min.map(|m| NonZeroU32::new(m).unwrap_or(NonZeroU32::MIN)),
        }
    }

    /// The codec as one number (for an atomic): the threshold in the low 32 bits (0: none),
    /// MessagePack in bit 32.
    pub fn pack(self) -> u64 {
        u64::from(self.deflate_min.map_or(0, NonZeroU32::get)) | (u64::from(self.msgpack) << 32)
    }

    /// The codec [`Codec::pack`] made this number of.
    pub fn unpack(packed: u64) -> Self {
        Self {
            msgpack: packed >> 32 & 1 == 1,
            deflate_min: NonZeroU32::new(packed as u32),
        }
    }

    /// The same parser, without compression.
    pub fn uncompressed(self) -> Self {
        Self {
            deflate_min: None,
            ..self
        }
    }

    /// Which of the four shapes of a shared event frame this session takes (for caches).
    pub fn variant(self) -> usize {
        usize::from(self.msgpack) * 2 + usize::from(self.deflate_min.is_some())
    }

    /// Socket.IO connect answer for `/`.
    pub fn connected(self, sid: &str) -> Bytes {
        if self.msgpack {
            msgpack::connected(sid)
        } else {
            packet::connected(sid)
        }
    }

    /// Socket.IO connect error.
    pub fn connect_error(self, nsp: &str, message: &str) -> Bytes {
        if self.msgpack {
            msgpack::connect_error(nsp, message)
        } else {
            packet::connect_error(nsp, message)
        }
    }

    /// Socket.IO disconnect from `/`.
    pub fn disconnect(self) -> Bytes {
        if self.msgpack {
            msgpack::disconnect()
        } else {
            packet::disconnect()
        }
    }

    // The gateway's own packets (acks, `authenticated`, `pong`, ...) are built for one session
    // and go plain: compressing them would be work per socket (and per connect in a reconnect
    // storm) for a few dozen bytes. Only relayed events, shared by every socket, are compressed.

    /// An event built by the gateway for this one session. MessagePack encodes `data` as its
    /// JSON value, so numbers keep their JSON meaning (and raw JSON is not written as a string).
    pub fn event(self, name: &str, data: &impl Serialize) -> Result<Bytes, EncodeError> {
        Ok(if self.msgpack {
            msgpack::event(name, &serde_json::to_value(data)?)?
        } else {
            packet::event_raw(name, &serde_json::to_string(data)?)
        })
    }

    /// An ack for this session (MessagePack: as [`Codec::event`]).
    pub fn ack(self, id: u64, data: &impl Serialize) -> Result<Bytes, EncodeError> {
        Ok(if self.msgpack {
            msgpack::ack(id, &serde_json::to_value(data)?)?
        } else {
            packet::ack(id, data)?
        })
    }
}
