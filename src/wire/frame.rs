//! WebSocket framing (RFC 6455), server side: decoding the client's masked frames and encoding
//! the server's unmasked ones.
//!
//! The decoder is incremental and keeps no buffer of its own: the connection hands it whatever
//! bytes it read and keeps only the unparsed tail, so an idle connection holds no read buffer.
//!
//! RSV1 marks a message compressed with permessage-deflate ([`super::deflate`]): accepted from a
//! client only when the session negotiated it, and only on the first frame of a data message.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes we handle, with their value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation = 0,
    /// UTF-8 text.
    Text = 1,
    /// Binary data.
    Binary = 2,
    /// Close (with an optional status code and reason).
    Close = 8,
    /// Ping: answered with a pong carrying the same payload.
    Ping = 9,
    /// Pong.
    Pong = 10,
}

impl Opcode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }
}

/// A decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate).
    pub rsv1: bool,
    /// What it carries.
    pub opcode: Opcode,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

/// Why the peer's bytes are not acceptable; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved bits, unknown opcode, unmasked client frame, fragmented control frame.
    Protocol(&'static str),
    /// A frame (or message) longer than the limit.
    TooBig,
}

impl FrameError {
    /// The close status code for this error, and its stable code: the metric label, the log
    /// field and the close reason.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Self::Protocol(why) => (1002, why),
            Self::TooBig => (1009, "message_too_big"),
        }
    }
}

/// Largest compressed frame accepted when messages may be `max_payload` bytes once inflated:
/// a little more than the cap, since data that does not compress grows slightly.
pub fn compressed_limit(max_payload: usize) -> usize {
    max_payload.saturating_add(max_payload / 256 + 64)
}

/// Decodes one frame from the start of `buf`. Returns the frame and how many bytes it used, or
/// `Ok(None)` when more bytes are needed. `deflate`: the session negotiated permessage-deflate,
/// so RSV1 may start a compressed message (whose frames may be slightly larger than
/// `max_payload`, see [`compressed_limit`]; the inflated size is checked by the inflater).
pub fn decode(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(FrameError::Protocol("reserved_bits"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(FrameError::Protocol("unknown_opcode"))?;
    if rsv1 && !matches!(opcode, Opcode::Text | Opcode::Binary) {
        // RFC 7692 §6.1: only the first frame of a data message carries RSV1.
        return Err(FrameError::Protocol("rsv1_not_on_first_frame"));
    }
    let max_payload = if rsv1 {
        compressed_limit(max_payload)
    } else {
        max_payload
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked_frame"));
    }
    let Some((len, mut at)) = payload_len(buf) else {
        return Ok(None);
    };
    if matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong) && (len > 125 || !fin) {
        return Err(FrameError::Protocol("bad_control_frame"));
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    let frame = Frame {
        fin,
        rsv1,
        opcode,
        payload,
    };
    Ok(Some((frame, at + len)))
}

/// The payload length the header at the start of `buf` gives (its 7-bit length, or the 16- or
/// 64-bit one that follows), and where that length ends; `None` until those bytes are there.
fn payload_len(buf: &[u8]) -> Option<(u64, usize)> {
    Some(match buf.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?).into(),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (n.into(), 2),
    })
}

/// Length of the header of an unmasked frame carrying `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// A complete unmasked server frame: `first` (FIN, RSV and opcode), then a payload that is the
/// concatenation of `parts` (so a packet can be framed without assembling it first).
fn encode_with(first: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(header_len(len) + len);
    out.put_u8(first);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out.freeze()
}

/// One complete unmasked server frame.
pub fn encode(opcode: Opcode, payload: &[u8]) -> Bytes {
    encode_with(0x80 | opcode as u8, &[payload])
}

/// A text frame whose payload is the concatenation of `parts`.
pub fn encode_text_parts(parts: &[&[u8]]) -> Bytes {
    encode_with(0x80 | Opcode::Text as u8, parts)
}

/// A complete server frame whose payload is compressed (RSV1 set), of the same opcode as
/// `plain`, the server frame it stands for.
pub fn encode_compressed(plain_first_byte: u8, payload: &[u8]) -> Bytes {
    encode_with(plain_first_byte | 0x40, &[payload])
}

/// The first byte (FIN, RSV and opcode) and the payload of a complete unmasked server frame
/// built by this module; `None` if `frame` is not one.
pub fn server_frame_parts(frame: &[u8]) -> Option<(u8, &[u8])> {
    split_server_frame(frame)
        .filter(|(_, _, used)| *used == frame.len())
        .map(|(first, payload, _)| (first, payload))
}

/// The first of the unmasked server frames built by this module at the start of `frames`: its
/// first byte, its payload and its whole length; `None` if no complete one is there.
pub fn split_server_frame(frames: &[u8]) -> Option<(u8, &[u8], usize)> {
    // Ours are never masked.
    let (len, header) = payload_len(frames).filter(|_| frames[1] & 0x80 == 0)?;
    let end = header.checked_add(usize::try_from(len).ok()?)?;
    Some((frames[0], frames.get(header..end)?, end))
}

/// A close frame with a status code and a reason (truncated to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    encode_with(0x80 | Opcode::Close as u8, &[&code.to_be_bytes(), reason])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        // The server's header for the same payload, with the mask bit set.
        let plain = encode_with((if fin { 0x80 } else { 0 }) | opcode, &[payload]);
        let mut out = plain[..plain.len() - payload.len()].to_vec();
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn decodes_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, 1, &payload);
            let (frame, used) = decode(&bytes, 1 << 20, false).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "len {len}");
            assert_eq!(frame.opcode, Opcode::Text);
            assert!(frame.fin);
            assert_eq!(frame.payload, payload, "len {len}");
            // Every strict prefix asks for more bytes.
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                assert_eq!(
                    decode(&bytes[..cut], 1 << 20, false).unwrap(),
                    None,
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn refuses_what_a_client_may_not_send() {
        let mut unmasked = client_frame(true, 1, b"hi");
        unmasked[1] &= 0x7f;
        let unknown_opcode = client_frame(true, 3, b"");
        let fragmented_ping = client_frame(false, 9, b"");
        for bad in [unmasked, unknown_opcode, fragmented_ping] {
            let decoded = decode(&bad, 100, false);
            assert!(matches!(decoded, Err(FrameError::Protocol(_))), "{bad:?}");
        }
        assert_eq!(
            decode(&client_frame(true, 1, &[b'a'; 101]), 100, false),
            Err(FrameError::TooBig)
        );
        assert_eq!(FrameError::TooBig.close().0, 1009);
    }

    #[test]
    fn rsv1_only_when_negotiated_and_only_on_a_first_data_frame() {
        let mut compressed = client_frame(true, 1, b"xy");
        compressed[0] |= 0x40;
        let (frame, _) = decode(&compressed, 100, true).unwrap().unwrap();
        assert!(frame.rsv1);
        assert_eq!(
            decode(&compressed, 100, false),
            Err(FrameError::Protocol("reserved_bits"))
        );
        let mut rsv2 = client_frame(true, 1, b"xy");
        rsv2[0] |= 0x20;
        assert!(decode(&rsv2, 100, true).is_err());
        for opcode in [0u8, 9] {
            let mut f = client_frame(true, opcode, b"");
            f[0] |= 0x40;
            assert_eq!(
                decode(&f, 100, true),
                Err(FrameError::Protocol("rsv1_not_on_first_frame"))
            );
        }
        // A compressed frame may be slightly larger than the (inflated) message limit.
        let mut big = client_frame(true, 2, &[0u8; 1080]);
        big[0] |= 0x40;
        assert!(decode(&big, 1024, true).unwrap().is_some());
        assert_eq!(decode(&big[..], 1000, true), Err(FrameError::TooBig));
    }

    #[test]
    fn encodes_unmasked_frames() {
        assert_eq!(&encode(Opcode::Text, b"2")[..], &[0x81, 1, b'2']);
        let big = encode_text_parts(&[&[b'x'; 200], b"yz"]);
        assert_eq!(&big[..4], &[0x81, 126, 0, 202]);
        assert_eq!(big.len(), 206);
        let huge = encode(Opcode::Binary, &vec![0u8; 70_000]);
        assert_eq!(&huge[..2], &[0x82, 127]);
        assert_eq!(huge.len(), 70_010);
        for plain in [encode(Opcode::Text, b"2"), big.clone(), huge.clone()] {
            let (first, payload) = server_frame_parts(&plain).unwrap();
            assert_eq!(first, plain[0]);
            assert_eq!(
                encode(Opcode::from_u8(first & 0x0f).unwrap(), payload),
                plain
            );
        }
        assert_eq!(server_frame_parts(&big[..big.len() - 1]), None);
        let z = encode_compressed(0x81, b"abc");
        assert_eq!(&z[..], &[0xc1, 3, b'a', b'b', b'c']);
        let close = encode_close(1000, "bye");
        assert_eq!(&close[..], &[0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
    }
}
