//! A minimal Socket.IO v5 / Engine.IO v4 client over WebSocket, namespace `/` only.
//!
//! Small on purpose: it is what the integration tests use to talk to a gateway over the
//! network, with nothing hidden between them and the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the namespace connection (`connect_error`); holds its message.
    #[error("connection refused: {0}")]
    Refused(String),
    /// Transport or protocol failure.
    #[error("transport: {0}")]
    Transport(String),
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
}

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected client.
pub struct Client {
    out: mpsc::Sender<String>,
    events: mpsc::Receiver<(String, Value)>,
    acks: Acks,
    next_ack: AtomicU64,
    /// The Socket.IO session id the server gave.
    pub sid: String,
}

/// Name of the pseudo-event pushed when the server disconnects the socket or the transport ends.
pub const DISCONNECTED: &str = "$disconnected";

fn transport<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Transport(e.to_string())
}

impl Client {
    /// Connects to `base` (`http://host:port`) with `auth` as the handshake payload.
    pub async fn connect(base: &str, auth: Option<Value>) -> Result<Client, ClientError> {
        Self::connect_from(base, auth, None).await
    }

    /// Like [`Client::connect`], from the local address `source` when given (a load balancer
    /// that hashes client addresses then spreads the clients of one machine).
    pub async fn connect_from(
        base: &str,
        auth: Option<Value>,
        source: Option<std::net::IpAddr>,
    ) -> Result<Client, ClientError> {
        let host = base.trim_start_matches("http://").trim_end_matches('/');
        let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
        let addr = tokio::net::lookup_host(host)
            .await
            .map_err(transport)?
            .next()
            .ok_or_else(|| ClientError::Transport(format!("cannot resolve {host}")))?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(transport)?;
        if let Some(ip) = source {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(transport)?;
        }
        let stream = socket.connect(addr).await.map_err(transport)?;
        stream.set_nodelay(true).map_err(transport)?;
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(transport)?;
        let (mut sink, mut stream) = ws.split();
        // Engine.IO open packet.
        match stream.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            other => {
                return Err(ClientError::Transport(format!(
                    "expected open packet, got {other:?}"
                )))
            }
        }
        let connect = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".to_string(),
        };
        sink.send(Message::text(connect)).await.map_err(transport)?;
        let sid = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    sink.send(Message::text("3")).await.map_err(transport)?;
                }
                Some(Ok(Message::Text(t))) if t.starts_with("40") => {
                    let v: Value = serde_json::from_str(&t[2..]).map_err(transport)?;
                    break v
                        .get("sid")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                }
                Some(Ok(Message::Text(t))) if t.starts_with("44") => {
                    let v: Value = serde_json::from_str(&t[2..]).map_err(transport)?;
                    let msg = v.get("message").and_then(Value::as_str).unwrap_or_default();
                    return Err(ClientError::Refused(msg.to_string()));
                }
                other => {
                    return Err(ClientError::Transport(format!(
                        "unexpected during connect: {other:?}"
                    )))
                }
            }
        };

        let (out_tx, mut out_rx) = mpsc::channel::<String>(1024);
        let (ev_tx, ev_rx) = mpsc::channel(65536);
        let acks: Acks = Arc::default();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                // An empty frame is the close request (see `Client::close`).
                if text.is_empty() || sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_acks = acks.clone();
        let pong = out_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                if t == "2" {
                    let _ = pong.send("3".into()).await;
                } else if let Some(p) = t.strip_prefix("42") {
                    if let Some((name, data)) = parse_event(p) {
                        if ev_tx.send((name, data)).await.is_err() {
                            break;
                        }
                    }
                } else if let Some(p) = t.strip_prefix("43") {
                    let digits = p.bytes().take_while(u8::is_ascii_digit).count();
                    let (id, rest) = p.split_at(digits);
                    let args: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                    let first = args.get(0).cloned().unwrap_or(Value::Null);
                    let waiter = id.parse().ok().and_then(|id: u64| {
                        reader_acks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id)
                    });
                    if let Some(w) = waiter {
                        let _ = w.send(first);
                    }
                } else if t.starts_with("41") || t == "1" {
                    break;
                }
            }
            // Fail every pending request now rather than at its deadline.
            reader_acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let _ = ev_tx.send((DISCONNECTED.to_string(), Value::Null)).await;
        });
        Ok(Client {
            out: out_tx,
            events: ev_rx,
            acks,
            next_ack: AtomicU64::new(1),
            sid,
        })
    }

    /// Emits `event` with one argument, without an ack.
    pub async fn emit(&self, event: &str, data: &Value) -> Result<(), ClientError> {
        let frame = format!("42{}", serde_json::json!([event, data]));
        self.out.send(frame).await.map_err(transport)
    }

    /// Sends a raw Engine.IO text frame (for tests of malformed input).
    pub async fn send_raw(&self, frame: &str) -> Result<(), ClientError> {
        self.out.send(frame.to_string()).await.map_err(transport)
    }

    /// Emits `event` with one argument and waits for the ack's first argument.
    pub async fn request(
        &self,
        event: &str,
        data: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let frame = format!("42{id}{}", serde_json::json!([event, data]));
        self.out.send(frame).await.map_err(transport)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ClientError::Transport(
                "connection closed before the ack".into(),
            )),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The next event received, or `None` if none arrives within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the next event named `name`, skipping others; `None` at the deadline.
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (n, v) = self.next_event(left).await?;
            if n == name {
                return Some(v);
            }
        }
    }

    /// Disconnects from the namespace and closes the transport.
    pub async fn close(self) {
        let _ = self.out.send("41".into()).await;
        let _ = self.out.send(String::new()).await;
    }
}

/// Parses `[name, arg]` (the part of an event packet after its type and optional ack id).
fn parse_event(p: &str) -> Option<(String, Value)> {
    let start = p.find('[')?;
    let v: Value = serde_json::from_str(&p[start..]).ok()?;
    let arr = v.as_array()?;
    let name = arr.first()?.as_str()?.to_string();
    Some((name, arr.get(1).cloned().unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_packets() {
        let (n, v) = parse_event(r#"["incident",{"a":1}]"#).unwrap();
        assert_eq!((n.as_str(), v["a"].as_i64()), ("incident", Some(1)));
        assert!(parse_event("garbage").is_none());
    }
}
