//! Engine.IO v4 and Socket.IO v5 packets as text, for the WebSocket transport: what a client may
//! send, and the server's packets already framed for the wire.
//!
//! Only the default namespace `/` exists; binary attachments are not part of the gateway's
//! protocol and are refused.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::{frame, Settings};

/// A packet received from a client.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// Engine.IO pong (answer to our ping).
    Pong,
    /// Engine.IO ping from the client (answered with a pong).
    Ping,
    /// Engine.IO close.
    Close,
    /// Engine.IO noop (and upgrade probes, which mean nothing on a WebSocket session).
    Noop,
    /// Socket.IO connect to a namespace, with the `auth` payload.
    Connect {
        /// Namespace, `/` by default.
        nsp: String,
        /// The client's `auth` object.
        auth: Option<Value>,
    },
    /// Socket.IO disconnect from a namespace.
    Disconnect,
    /// Socket.IO event.
    Event {
        /// Namespace, `/` by default.
        nsp: String,
        /// Ack id when the client waits for an answer.
        ack: Option<u64>,
        /// Event name.
        name: String,
        /// First argument.
        data: Option<Value>,
    },
    /// Socket.IO ack of a server event (the gateway never asks for one).
    Ack,
}

/// Why a client's packet could not be read; `code` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketError(pub &'static str);

/// Reads one Engine.IO packet (the text of one WebSocket message).
pub fn parse(text: &str) -> Result<Incoming, PacketError> {
    let mut chars = text.chars();
    match chars.next() {
        Some('3') => Ok(Incoming::Pong),
        Some('2') => Ok(Incoming::Ping),
        Some('1') => Ok(Incoming::Close),
        Some('5') | Some('6') => Ok(Incoming::Noop),
        Some('4') => parse_socketio(&text[1..]),
        Some(_) => Err(PacketError("unknown_engine_packet")),
        None => Err(PacketError("empty")),
    }
}

fn parse_socketio(text: &str) -> Result<Incoming, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError("empty"))?;
    // A type that is not one ASCII digit is no packet type (and not a byte to slice after).
    let kind = u8::try_from(kind).map_err(|_| PacketError("unknown_socketio_packet"))?;
    let rest = chars.as_str();
    let (nsp, rest) = if rest.starts_with('/') {
        rest.split_once(',').unwrap_or((rest, ""))
    } else {
        ("/", rest)
    };
    let nsp = nsp.to_owned();
    let (id, rest) = rest.split_at(rest.bytes().take_while(u8::is_ascii_digit).count());
    let ack = (!id.is_empty()).then(|| id.parse::<u64>());
    let ack = ack.transpose().map_err(|_| PacketError("bad_ack_id"))?;
    // Read only by the packets that carry data.
    let json = || {
        let data = (!rest.is_empty()).then(|| serde_json::from_str(rest));
        data.transpose().map_err(|_| PacketError("bad_json"))
    };
    match kind {
        b'5' | b'6' => Err(PacketError("binary_not_supported")),
        _ => socketio(kind.wrapping_sub(b'0'), nsp, ack, json),
    }
}

/// A Socket.IO packet of type `kind` (0 connect, 1 disconnect, 2 event, 3 ack) for `nsp`,
/// whichever parser read it; `data` reads what it carries, for the packets that carry some.
pub(super) fn socketio(
    kind: u8,
    nsp: String,
    ack: Option<u64>,
    data: impl FnOnce() -> Result<Option<Value>, PacketError>,
) -> Result<Incoming, PacketError> {
    match kind {
        0 => Ok(Incoming::Connect { nsp, auth: data()? }),
        1 => Ok(Incoming::Disconnect),
        2 => {
            // An event's data is `["name", arg, ...]`: its name and first argument.
            let Some(Value::Array(args)) = data()? else {
                return Err(PacketError("event_not_array"));
            };
            let mut args = args.into_iter();
            let Some(Value::String(name)) = args.next() else {
                return Err(PacketError("event_without_name"));
            };
            let data = args.next();
            Ok(Incoming::Event {
                nsp,
                ack,
                name,
                data,
            })
        }
        3 => Ok(Incoming::Ack),
        _ => Err(PacketError("unknown_socketio_packet")),
    }
}

/// Engine.IO open packet of a session, framed, with the timers and limit of `cfg`; `upgrades`
/// offers the WebSocket (to a session on long-polling).
pub fn open(sid: &str, upgrades: bool, cfg: &Settings) -> Bytes {
    let upgrades: &[&str] = if upgrades { &["websocket"] } else { &[] };
    let body = serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": cfg.ping_interval.as_millis() as u64,
        "pingTimeout": cfg.ping_timeout.as_millis() as u64,
        "maxPayload": cfg.max_packet,
    });
    frame::encode_text_parts(&[b"0", body.to_string().as_bytes()])
}

/// Engine.IO ping.
pub fn ping() -> Bytes {
    frame::encode(frame::Opcode::Text, b"2")
}

/// Engine.IO pong (answer to a client's ping).
pub fn pong() -> Bytes {
    frame::encode(frame::Opcode::Text, b"3")
}

/// Socket.IO connect answer for `/`.
pub fn connected(sid: &str) -> Bytes {
    let body = serde_json::json!({ "sid": sid });
    frame::encode_text_parts(&[b"40", body.to_string().as_bytes()])
}

/// Socket.IO connect error: the client's `connect_error` carries `message`.
pub fn connect_error(nsp: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "message": message }).to_string();
    if nsp == "/" {
        frame::encode_text_parts(&[b"44", body.as_bytes()])
    } else {
        frame::encode_text_parts(&[b"44", nsp.as_bytes(), b",", body.as_bytes()])
    }
}

/// Socket.IO disconnect from `/`.
pub fn disconnect() -> Bytes {
    frame::encode(frame::Opcode::Text, b"41")
}

/// Socket.IO event `name` with one argument, already encoded as JSON.
pub fn event_raw(name: &str, json: &str) -> Bytes {
    let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".to_owned());
    frame::encode_text_parts(&[b"42[", name.as_bytes(), b",", json.as_bytes(), b"]"])
}

/// Socket.IO ack `id` with one argument.
pub fn ack(id: u64, data: &impl Serialize) -> Result<Bytes, serde_json::Error> {
    let (head, json) = (format!("43{id}["), serde_json::to_string(data)?);
    Ok(frame::encode_text_parts(&[
        head.as_bytes(),
        json.as_bytes(),
        b"]",
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(frame::server_frame_parts(b).unwrap().1).unwrap()
    }

    #[test]
    fn reads_client_packets() {
        assert_eq!(parse("3"), Ok(Incoming::Pong));
        assert_eq!(parse("1"), Ok(Incoming::Close));
        assert_eq!(
            parse("40"),
            Ok(Incoming::Connect {
                nsp: "/".into(),
                auth: None
            })
        );
        assert_eq!(
            parse(r#"40{"token":"t"}"#),
            Ok(Incoming::Connect {
                nsp: "/".into(),
                auth: Some(json!({"token": "t"}))
            })
        );
        assert_eq!(
            parse(r#"40/admin,{"token":"t"}"#),
            Ok(Incoming::Connect {
                nsp: "/admin".into(),
                auth: Some(json!({"token": "t"}))
            })
        );
        assert_eq!(
            parse(r#"4212["join",{"room":"batch:1"},"extra"]"#),
            Ok(Incoming::Event {
                nsp: "/".into(),
                ack: Some(12),
                name: "join".into(),
                data: Some(json!({"room": "batch:1"}))
            })
        );
        assert_eq!(
            parse(r#"42["ping"]"#),
            Ok(Incoming::Event {
                nsp: "/".into(),
                ack: None,
                name: "ping".into(),
                data: None
            })
        );
        assert_eq!(parse("41"), Ok(Incoming::Disconnect));
    }

    #[test]
    fn names_what_is_wrong_with_a_packet() {
        assert_eq!(parse(""), Err(PacketError("empty")));
        assert_eq!(parse("9"), Err(PacketError("unknown_engine_packet")));
        assert_eq!(parse("42{"), Err(PacketError("bad_json")));
        assert_eq!(parse(r#"42{"a":1}"#), Err(PacketError("event_not_array")));
        assert_eq!(parse("42[1]"), Err(PacketError("event_without_name")));
        assert_eq!(parse("42[]"), Err(PacketError("event_without_name")));
        assert_eq!(
            parse(r#"451-["up",{"_placeholder":true,"num":0}]"#),
            Err(PacketError("binary_not_supported"))
        );
        assert_eq!(parse("4"), Err(PacketError("empty")));
        // A packet type that is a character of several bytes is refused, not sliced through.
        for text in ["4é", "4é[]", "4\u{1F600}2[\"a\"]"] {
            assert_eq!(
                parse(text),
                Err(PacketError("unknown_socketio_packet")),
                "{text}"
            );
        }
    }

    #[test]
    fn writes_server_packets() {
        assert_eq!(text(&connected("abc")), r#"40{"sid":"abc"}"#);
        assert_eq!(
            text(&connect_error("/", "token_expired")),
            r#"44{"message":"token_expired"}"#
        );
        assert_eq!(
            text(&connect_error("/x", "Invalid namespace")),
            r#"44/x,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            text(&event_raw("pong", r#"{"t":1}"#)),
            r#"42["pong",{"t":1}]"#
        );
        assert_eq!(
            text(&ack(7, &json!({"ok": true})).unwrap()),
            r#"437[{"ok":true}]"#
        );
        let cfg = Settings {
            ping_interval: std::time::Duration::from_secs(25),
            ping_timeout: std::time::Duration::from_secs(20),
            connect_timeout: std::time::Duration::from_secs(5),
            max_packet: 1000,
            socket_buffer: 0,
            max_replay: 0,
            compression_min: None,
        };
        let open: Value = serde_json::from_str(&text(&open("s1", false, &cfg))[1..]).unwrap();
        assert_eq!(open["upgrades"], json!([]));
        assert_eq!(open["pingInterval"], json!(25000));
        assert_eq!(text(&disconnect()), "41");
    }
}
