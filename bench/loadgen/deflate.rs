//! permessage-deflate on the generator's side (`clients --deflate`): the connection offers the
//! extension, and this stream adapter, between the TCP stream and tungstenite (which has no
//! permessage-deflate), inflates every compressed frame from the server into a plain one. The
//! gateway compresses without context takeover, so each frame inflates on its own, with one
//! inflater per thread reset for every frame: nothing is kept per connection.
//!
//! Frames to the server go uncompressed (RFC 7692 lets a client send plain messages).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The extension offer sent in the upgrade request.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

thread_local! {
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A stream whose reads have the server's compressed frames inflated (when `on`).
pub struct Inflating<S> {
    inner: S,
    on: bool,
    /// The response head has been passed through; frames follow.
    in_frames: bool,
    /// Bytes read and not yet turned into output.
    raw: Vec<u8>,
    /// Output not yet handed to the reader.
    out: Vec<u8>,
    out_at: usize,
}

impl<S> Inflating<S> {
    /// Wraps `inner`; with `on` false every byte passes through untouched.
    pub fn new(inner: S, on: bool) -> Self {
        Self {
            inner,
            on,
            in_frames: false,
            raw: Vec::new(),
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Moves what is complete in `raw` to `out`; false when more bytes are needed.
    fn process(&mut self) -> io::Result<bool> {
        if !self.in_frames {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(false);
            };
            self.out.extend(self.raw.drain(..end + 4));
            self.in_frames = true;
            return Ok(true);
        }
        let buf = &self.raw;
        if buf.len() < 2 {
            return Ok(false);
        }
        let (len, at) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return Ok(false),
            n => (n as usize, 2),
        };
        if buf.len() < at + len {
            return Ok(false);
        }
        if buf[0] & 0x40 == 0 {
            self.out.extend(self.raw.drain(..at + len));
            return Ok(true);
        }
        let mut input = buf[at..at + len].to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let payload = INFLATER.with(|d| {
            let mut d = d.borrow_mut();
            d.reset(false);
            let mut payload = Vec::with_capacity(len * 4 + 64);
            loop {
                let before = d.total_in();
                d.decompress_vec(&input, &mut payload, FlushDecompress::Sync)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                input.drain(..(d.total_in() - before) as usize);
                if input.is_empty() && payload.len() < payload.capacity() {
                    return Ok::<_, io::Error>(payload);
                }
                payload.reserve(payload.capacity());
            }
        })?;
        let first = buf[0] & !0x40;
        self.raw.drain(..at + len);
        self.out.push(first);
        match payload.len() {
            n @ 0..=125 => self.out.push(n as u8),
            n @ 126..=65535 => {
                self.out.push(126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&payload);
        Ok(true)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.on {
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        loop {
            if me.out_at < me.out.len() {
                let n = (me.out.len() - me.out_at).min(buf.remaining());
                buf.put_slice(&me.out[me.out_at..me.out_at + n]);
                me.out_at += n;
                if me.out_at == me.out.len() {
                    me.out.clear();
                    me.out_at = 0;
                    if me.out.capacity() > 65536 {
                        me.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if me.process()? {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // End of stream: whatever is left (an incomplete frame) goes as it is.
                if me.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                me.out.append(&mut me.raw);
                continue;
            }
            me.raw.extend_from_slice(rb.filled());
            if me.raw.capacity() > 65536 && me.raw.len() < 1024 {
                me.raw.shrink_to(1024);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn inflates_compressed_frames_and_passes_the_rest() {
        let text = "42[\"incident\",{\"a\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}]";
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(256);
        c.compress_vec(text.as_bytes(), &mut z, flate2::FlushCompress::Sync)
            .unwrap();
        z.truncate(z.len() - 4);
        let mut wire = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        wire.extend_from_slice(&[0x81, 1, b'2']);
        wire.extend_from_slice(&[0xc1, z.len() as u8]);
        wire.extend_from_slice(&z);
        let mut s = Inflating::new(&wire[..], true);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let mut want = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        want.extend_from_slice(&[0x81, 1, b'2', 0x81, text.len() as u8]);
        want.extend_from_slice(text.as_bytes());
        assert_eq!(got, want);
    }
}
