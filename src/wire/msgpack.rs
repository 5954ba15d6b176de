//! Socket.IO packets as MessagePack, the format of the stock `socket.io-msgpack-parser`: each
//! packet is one binary WebSocket message holding a map `{ type, nsp, data?, id? }` (Engine.IO
//! packets such as ping and pong stay text).
//!
//! Values keep their JSON meaning: integers are written in the smallest MessagePack integer
//! that holds them, other numbers as 64-bit floats, so a client decodes the same numbers a JSON
//! client gets from `JSON.parse` (see the README on large integers).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::frame::{self, Opcode};
use super::packet::{socketio, Incoming, PacketError};

/// Socket.IO packet types.
const CONNECT: u8 = 0;
const DISCONNECT: u8 = 1;
const EVENT: u8 = 2;
const ACK: u8 = 3;
const CONNECT_ERROR: u8 = 4;

#[derive(Serialize)]
struct Out<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: u8,
    nsp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// A packet as the client's parser sends it; other keys (socket.io-client adds `options`) are
/// ignored.
#[derive(Deserialize)]
struct In {
    #[serde(rename = "type")]
    kind: u8,
    nsp: Option<String>,
    data: Option<Value>,
    id: Option<u64>,
}

/// Error of encoding a value as MessagePack.
pub type EncodeError = rmp_serde::encode::Error;

fn packet<T: Serialize>(
    kind: u8,
    nsp: &str,
    data: Option<T>,
    id: Option<u64>,
) -> Result<Bytes, EncodeError> {
    let bytes = rmp_serde::to_vec_named(&Out {
        kind,
        nsp,
        data,
        id,
    })?;
    Ok(frame::encode(Opcode::Binary, &bytes))
}

/// Reads one Socket.IO packet (a binary message of a msgpack session).
pub fn parse(bytes: &[u8]) -> Result<Incoming, PacketError> {
    let p: In = rmp_serde::from_slice(bytes).map_err(|_| PacketError("bad_msgpack"))?;
    let nsp = p.nsp.unwrap_or_else(|| "/".to_owned());
    socketio(p.kind, nsp, p.id, || Ok(p.data))
}

// Maps of strings cannot fail to encode: the next three never fall back to the empty frame.

/// Socket.IO connect answer for `/`.
pub fn connected(sid: &str) -> Bytes {
    let data = std::collections::BTreeMap::from([("sid", sid)]);
    packet(CONNECT, "/", Some(data), None).unwrap_or_default()
}

/// Socket.IO connect error: the client's `connect_error` carries `message`.
pub fn connect_error(nsp: &str, message: &str) -> Bytes {
    let data = std::collections::BTreeMap::from([("message", message)]);
    packet(CONNECT_ERROR, nsp, Some(data), None).unwrap_or_default()
}

/// Socket.IO disconnect from `/` (no data: the stock parser refuses one).
pub fn disconnect() -> Bytes {
    packet(DISCONNECT, "/", None::<()>, None).unwrap_or_default()
}

/// Socket.IO event `name` with one argument.
pub fn event(name: &str, data: &impl Serialize) -> Result<Bytes, EncodeError> {
    packet(EVENT, "/", Some((name, data)), None)
}

/// Socket.IO ack `id` with one argument.
pub fn ack(id: u64, data: &impl Serialize) -> Result<Bytes, EncodeError> {
    packet(ACK, "/", Some([data]), Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The packet inside a binary frame, as the client's parser decodes it.
    fn decoded(frame: &Bytes) -> Value {
        let (first, payload) = frame::server_frame_parts(frame).unwrap();
        assert_eq!(first, 0x82, "one binary frame");
        rmp_serde::from_slice(payload).unwrap()
    }

    #[test]
    fn writes_what_the_stock_parser_reads() {
        assert_eq!(
            decoded(&connected("abc")),
            json!({"type": 0, "nsp": "/", "data": {"sid": "abc"}})
        );
        assert_eq!(
            decoded(&connect_error("/", "token_expired")),
            json!({"type": 4, "nsp": "/", "data": {"message": "token_expired"}})
        );
        assert_eq!(decoded(&disconnect()), json!({"type": 1, "nsp": "/"}));
        let envelope = json!({
            "id": "01J", "offset": 7, "big": 9_007_199_254_740_993u64, "neg": -5,
            "ratio": 0.5, "none": null, "list": [1, "two", true]
        });
        assert_eq!(
            decoded(&event("batch_update", &envelope).unwrap()),
            json!({"type": 2, "nsp": "/", "data": ["batch_update", envelope]})
        );
        assert_eq!(
            decoded(&ack(12, &json!({"ok": true})).unwrap()),
            json!({"type": 3, "nsp": "/", "data": [{"ok": true}], "id": 12})
        );
    }

    #[test]
    fn integers_take_their_smallest_form() {
        let tail = |v: Value, n: usize| {
            let f = event("e", &v).unwrap();
            let (_, payload) = frame::server_frame_parts(&f).unwrap();
            payload[payload.len() - n..].to_vec()
        };
        // The packet ends with the argument: a positive fixint, a uint 64, an int 8, a float 64.
        assert_eq!(tail(json!(5), 1), [5]);
        assert_eq!(
            tail(json!(u64::MAX), 9),
            [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(tail(json!(-100), 2), [0xd0, 0x9c]);
        assert_eq!(tail(json!(1.5), 9)[0], 0xcb);
    }

    #[test]
    fn reads_what_the_stock_parser_writes() {
        // socket.io-client: emit("join", { room: "batch:1" }, ack) with ack id 3.
        let p = rmp_serde::to_vec_named(&json!({
            "type": 2, "data": ["join", {"room": "batch:1"}], "options": {"compress": true},
            "id": 3, "nsp": "/"
        }))
        .unwrap();
        assert_eq!(
            parse(&p),
            Ok(Incoming::Event {
                nsp: "/".into(),
                ack: Some(3),
                name: "join".into(),
                data: Some(json!({"room": "batch:1"}))
            })
        );
        let p = rmp_serde::to_vec_named(&json!({"type": 0, "nsp": "/", "data": {"token": "t"}}))
            .unwrap();
        assert_eq!(
            parse(&p),
            Ok(Incoming::Connect {
                nsp: "/".into(),
                auth: Some(json!({"token": "t"}))
            })
        );
        let p = rmp_serde::to_vec_named(&json!({"type": 1, "nsp": "/"})).unwrap();
        assert_eq!(parse(&p), Ok(Incoming::Disconnect));
        assert_eq!(parse(b"\xc1"), Err(PacketError("bad_msgpack")));
        let p = rmp_serde::to_vec_named(&json!({"type": 9, "nsp": "/"})).unwrap();
        assert_eq!(parse(&p), Err(PacketError("unknown_socketio_packet")));
        let p = rmp_serde::to_vec_named(&json!({"type": 2, "nsp": "/", "data": [1]})).unwrap();
        assert_eq!(parse(&p), Err(PacketError("event_without_name")));
    }
}
