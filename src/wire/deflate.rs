//! permessage-deflate (RFC 7692) for the WebSocket transport, without context takeover in either
//! direction, so nothing is kept per connection:
//!
//! - server to client: every message is compressed on its own (`server_no_context_takeover`),
//!   so the compressed frame of an event is valid on every socket that negotiated the extension
//!   and is made once per event, like the plain frame. The compressor is shared: one per worker
//!   thread, reset before each message.
//! - client to server: the answer carries `client_no_context_takeover` (RFC 7692 §7.1.1.2 lets a
//!   server ask for it whether or not the client offered it), so each compressed client message
//!   stands alone. Its inflater is created on demand when the message starts and dropped when it
//!   ends: an idle connection holds none.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The tail a sync flush leaves, removed from each compressed message (RFC 7692 §7.2.1) and put
/// back before inflating one (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The response header line for an accepted offer (`None`: no offer acceptable), given every
/// `Sec-WebSocket-Extensions` value of the request. The first acceptable offer wins.
///
/// An offer is declined when it has an unknown or repeated parameter, a parameter value that is
/// not allowed, or `server_max_window_bits` below 15: the compressed frame of an event is shared
/// by every socket, so it is made with one window size. `client_max_window_bits` (which browsers
/// send) is accepted and left out of the answer: the inflater takes any window up to 15 bits.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) if bits(v).is_some_and(|b| (8..=15).contains(&b)) => {}
            ("server_max_window_bits", v) if bits(v) == Some(15) => server_bits = true,
            _ => return None,
        }
        seen.push(name);
    }
    Some(if server_bits {
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15\r\n"
    } else {
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    })
}

thread_local! {
    /// One compressor per worker thread, reset for every message: compression state costs
    /// a few hundred KiB, so it is never kept per connection (or per event).
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::default(), false));
}

/// The server frame `plain` with its payload compressed (RSV1 set), or `None` when the payload
/// is shorter than `min` bytes or does not get smaller (then `plain` is sent as it is).
pub fn compress_frame(plain: &[u8], min: usize) -> Option<Bytes> {
    let (first, payload) =
        frame::server_frame_parts(plain).filter(|(_, p)| p.len() >= min.max(1))?;
    let compressed = COMPRESSOR.with(|c| compress(&mut c.borrow_mut(), payload))?;
    (compressed.len() < payload.len()).then(|| frame::encode_compressed(first, &compressed))
}

/// One message, compressed on its own, without the sync flush's tail.
fn compress(c: &mut Compress, mut input: &[u8]) -> Option<Vec<u8>> {
    c.reset();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
        input = &input[(c.total_in() - before) as usize..];
        // Done once all input is taken and the flush had room to finish.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close 1009).
    TooBig,
    /// Not a valid DEFLATE stream (close 1007).
    Corrupt,
}

/// Inflates one compressed client message, frame by frame, never holding more than `cap`
/// bytes of output: a deflate bomb is stopped at the cap, not after it expanded. The compressed
/// bytes of a message are capped too (a little above `cap`, as for one frame), so a message
/// cannot be kept open forever with fragments that inflate to nothing.
pub struct Inflater {
    d: Decompress,
    out: Vec<u8>,
    cap: usize,
    /// Compressed bytes still allowed.
    input_left: usize,
    ended: bool,
}

impl Inflater {
    /// An inflater for a message of at most `cap` bytes once inflated.
    pub fn new(cap: usize) -> Self {
        Self {
            d: Decompress::new(false),
            out: Vec::new(),
            cap,
            input_left: frame::compressed_limit(cap),
            ended: false,
        }
    }

    /// Inflates the compressed bytes of one frame of the message.
    pub fn push(&mut self, data: &[u8]) -> Result<(), InflateError> {
        self.input_left = self
            .input_left
            .checked_sub(data.len())
            .ok_or(InflateError::TooBig)?;
        self.run(data, FlushDecompress::None)
    }

    /// Ends the message: the inflated bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, InflateError> {
        self.run(&TAIL, FlushDecompress::Sync)?;
        Ok(self.out)
    }

    fn run(&mut self, mut input: &[u8], flush: FlushDecompress) -> Result<(), InflateError> {
        let mut chunk = [0u8; 4096];
        while !self.ended {
            let (in0, out0) = (self.d.total_in(), self.d.total_out());
            let status = self
                .d
                .decompress(input, &mut chunk, flush)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (self.d.total_in() - in0) as usize;
            let made = (self.d.total_out() - out0) as usize;
            input = &input[used..];
            self.append(&chunk[..made])?;
            if status == Status::StreamEnd {
                // A final block ends the message's stream; anything after it means nothing.
                self.ended = true;
            } else if made < chunk.len() && (input.is_empty() || used == 0) {
                // All output is out, and the input is used up (or waits for more).
                return Ok(());
            }
        }
        Ok(())
    }

    /// Keeps `data`, growing the output by doubling but never past the cap.
    fn append(&mut self, data: &[u8]) -> Result<(), InflateError> {
        let need = self.out.len() + data.len();
        if need > self.cap {
            return Err(InflateError::TooBig);
        }
        if need > self.out.capacity() {
            let grown = (self.out.capacity() * 2).max(need).max(256).min(self.cap);
            self.out.reserve_exact(grown - self.out.len());
        }
        self.out.extend_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{encode, Opcode};

    /// What a client sends: one message compressed with a fresh context, tail removed.
    fn client_compress(data: &[u8]) -> Vec<u8> {
        compress(&mut Compress::new(Compression::default(), false), data).unwrap()
    }

    fn inflate_all(parts: &[&[u8]], cap: usize) -> Result<Vec<u8>, InflateError> {
        let mut i = Inflater::new(cap);
        for p in parts {
            i.push(p)?;
        }
        i.finish()
    }

    #[test]
    fn accepts_the_offers_browsers_and_ws_make() {
        let plain = "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=\"12\"",
            "x-webkit-deflate-frame, permessage-deflate",
            "PerMessage-Deflate ; Client_Max_Window_Bits",
        ] {
            assert_eq!(negotiate([offer]), Some(plain), "{offer}");
        }
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=15"]),
            Some("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15\r\n")
        );
        // Several header lines: the first acceptable offer wins.
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate"
            ]),
            Some(plain)
        );
    }

    #[test]
    fn declines_what_it_cannot_honour() {
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(negotiate([offer]), None, "{offer}");
        }
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn compresses_a_frame_once_for_any_reader() {
        let json = format!(
            "42[\"batch_update\",{}]",
            serde_json::json!({ "rows": vec![serde_json::json!({"scriptId": 1, "status": "graded"}); 40] })
        );
        let plain = encode(Opcode::Text, json.as_bytes());
        let z = compress_frame(&plain, 256).unwrap();
        assert_eq!(z[0], 0xc1, "FIN, RSV1, text");
        let (_, payload) = frame::server_frame_parts(&z).unwrap();
        assert!(payload.len() < json.len() / 4);
        // Any reader inflates it on its own (no context from earlier messages is needed).
        assert_eq!(inflate_all(&[payload], 1 << 20).unwrap(), json.as_bytes());
        // The shared compressor is reset between messages: the same input, the same bytes.
        assert_eq!(compress_frame(&plain, 256).unwrap(), z);
        // Below the threshold, or not smaller: sent plain.
        assert_eq!(
            compress_frame(&encode(Opcode::Text, b"42[\"x\"]"), 256),
            None
        );
        let mut x = 1u64;
        let noise: Vec<u8> = (0..600)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 56) as u8
            })
            .collect();
        assert_eq!(compress_frame(&encode(Opcode::Binary, &noise), 256), None);
    }

    #[test]
    fn inflates_fragmented_messages() {
        let data = b"hello hello hello hello hello world".repeat(20);
        let z = client_compress(&data);
        let (a, b) = z.split_at(z.len() / 3);
        assert_eq!(inflate_all(&[a, b], data.len()).unwrap(), data);
        assert_eq!(inflate_all(&[&[], &z, &[]], data.len()).unwrap(), data);
        // An empty message compresses to a lone empty block (or nothing at all).
        assert_eq!(inflate_all(&[&[0x00]], 10).unwrap(), b"");
        assert_eq!(inflate_all(&[], 10).unwrap(), b"");
    }

    #[test]
    fn stops_a_bomb_at_the_cap() {
        let bomb = client_compress(&vec![b'a'; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let mut i = Inflater::new(16 * 1024);
        let mut result = Ok(());
        for piece in bomb.chunks(100) {
            result = i.push(piece);
            if result.is_err() {
                break;
            }
            assert!(i.out.capacity() <= 16 * 1024);
        }
        assert_eq!(result, Err(InflateError::TooBig));
        assert!(i.out.capacity() <= 16 * 1024, "{}", i.out.capacity());
        // Fragments that inflate to nothing cannot keep a message open forever.
        let mut i = Inflater::new(1024);
        let empty_block = [0x00, 0x00, 0x00, 0xff, 0xff];
        let pushed = (0..1000)
            .take_while(|_| i.push(&empty_block).is_ok())
            .count();
        assert!((200..300).contains(&pushed), "{pushed}");
        // Exactly at the cap is fine; one byte more is not.
        let z = client_compress(&[b'b'; 1000]);
        assert_eq!(inflate_all(&[&z], 1000).unwrap().len(), 1000);
        assert_eq!(inflate_all(&[&z], 999), Err(InflateError::TooBig));
    }

    #[test]
    fn names_a_corrupt_stream() {
        // Block type 3 does not exist.
        assert_eq!(
            inflate_all(&[&[0xff, 0xff, 0xff]], 100),
            Err(InflateError::Corrupt)
        );
        // A stored block whose length check does not match.
        assert_eq!(
            inflate_all(&[&[0x00, 0x05, 0x00, 0x00, 0x00]], 100),
            Err(InflateError::Corrupt)
        );
    }
}
