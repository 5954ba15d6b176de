//! A client that behaves like a well-written application on the stock Socket.IO client: it
//! tracks its position in every room, reconnects by itself when the transport is lost, and asks
//! for everything it missed. It records what it saw so a test can prove nothing was lost,
//! doubled or reordered.

use std::collections::HashMap;
use std::time::Duration;

use super::client::{Client, DISCONNECTED};
use serde_json::{json, Map, Value};

use super::{token, WAIT};

/// What one client saw in one room.
#[derive(Debug, Default, Clone)]
pub struct RoomLog {
    /// Epoch the client holds.
    pub epoch: String,
    /// Offsets received, in arrival order.
    pub offsets: Vec<u64>,
    /// `recovered: false` answers (with reasons).
    pub not_recovered: Vec<String>,
    /// Offset the client started from (it never wanted events at or before it).
    pub floor: u64,
    /// For each received offset, the connection (count of reconnects) it came on.
    pub via: Vec<usize>,
    /// Positions in `offsets` where a `resync` for this room arrived (a new epoch starts).
    pub resync_at: Vec<usize>,
}

/// Why setting up a connection failed.
enum Setup {
    /// The connection dropped: try again.
    Lost(String),
    /// The server refused something: a test failure.
    Refused(String),
}

/// A self-reconnecting client.
pub struct Resilient {
    url: String,
    sub: String,
    tenant: String,
    /// Rooms joined on request (automatic rooms are tracked too).
    joined: Vec<String>,
    client: Option<Client>,
    /// Local address to connect from.
    source: Option<std::net::IpAddr>,
    /// Per room: what was seen.
    pub rooms: HashMap<String, RoomLog>,
    /// How many times the transport was lost and re-established.
    pub reconnects: usize,
    /// `resync` events received.
    pub resyncs: Vec<Value>,
}

impl Resilient {
    /// Connects and joins `rooms`.
    pub async fn connect(url: &str, sub: &str, tenant: &str, rooms: &[&str]) -> Resilient {
        Self::connect_from(url, sub, tenant, rooms, None).await
    }

    /// Connects from a given local address.
    pub async fn connect_from(
        url: &str,
        sub: &str,
        tenant: &str,
        rooms: &[&str],
        source: Option<std::net::IpAddr>,
    ) -> Resilient {
        let mut me = Resilient {
            source,
            url: url.to_string(),
            sub: sub.to_string(),
            tenant: tenant.to_string(),
            joined: rooms.iter().map(|r| r.to_string()).collect(),
            client: None,
            rooms: HashMap::new(),
            reconnects: 0,
            resyncs: Vec::new(),
        };
        me.establish(WAIT).await.expect("first connect");
        me
    }

    fn since(&self, room: &str) -> Option<Value> {
        self.rooms
            .get(room)
            .filter(|l| !l.epoch.is_empty())
            .map(|l| json!({ "epoch": l.epoch, "offset": l.offsets.last().copied().unwrap_or(0).max(self.position_floor(room)) }))
    }

    /// The offset a room started at when first entered (events before it were never wanted).
    fn position_floor(&self, room: &str) -> u64 {
        self.rooms.get(room).map(|l| l.floor).unwrap_or(0)
    }

    /// Connects (with positions when known), re-enters every room, and records the answers.
    async fn establish(&mut self, deadline: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let mut since = Map::new();
            for room in [
                format!("institution:{}", self.tenant),
                format!("user:{}", self.sub),
            ] {
                if let Some(s) = self.since(&room) {
                    since.insert(room, s);
                }
            }
            let auth =
                json!({ "token": token(&self.sub, &self.tenant, "ADMIN", 3600), "since": since });
            match Client::connect_from(&self.url, Some(auth), self.source).await {
                Ok(c) => {
                    self.client = Some(c);
                    match self.enter_rooms().await {
                        Ok(()) => return Ok(()),
                        Err(Setup::Refused(e)) => return Err(e),
                        Err(Setup::Lost(e)) => {
                            // The new connection dropped during setup (a draining gateway):
                            // try again, like the stock client would.
                            self.client = None;
                            if tokio::time::Instant::now() >= until {
                                return Err(format!("could not reconnect: {e}"));
                            }
                        }
                    }
                }
                Err(e) => {
                    if tokio::time::Instant::now() >= until {
                        return Err(format!("could not reconnect: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// After connecting: records the automatic rooms' answers and joins the other rooms.
    async fn enter_rooms(&mut self) -> Result<(), Setup> {
        let auth = self
            .pump_until("authenticated")
            .await
            .ok_or(Setup::Lost("no authenticated".into()))?;
        for entry in auth["rooms"].as_array().cloned().unwrap_or_default() {
            self.record_entry(&entry);
        }
        for room in self.joined.clone() {
            let mut req = json!({ "room": room });
            if let Some(s) = self.since(&room) {
                req["since"] = s;
            }
            let client = self
                .client
                .as_ref()
                .ok_or(Setup::Lost("no connection".into()))?;
            let ack = client
                .request("join", &req, WAIT)
                .await
                .map_err(|e| Setup::Lost(e.to_string()))?;
            if ack["ok"] != true {
                return Err(Setup::Refused(format!("join {room} refused: {ack}")));
            }
            // Events replayed before the ack wait in the queue; take them first.
            if !self.drain_queued().await {
                return Err(Setup::Lost("connection lost after join".into()));
            }
            self.record_entry(&ack);
        }
        Ok(())
    }

    fn record_entry(&mut self, entry: &Value) {
        let Some(room) = entry["room"].as_str() else {
            return;
        };
        let log = self.rooms.entry(room.to_string()).or_default();
        let epoch = entry["epoch"].as_str().unwrap_or_default().to_string();
        if entry["recovered"] == false {
            log.not_recovered
                .push(entry["reason"].as_str().unwrap_or("?").to_string());
        }
        if log.epoch.is_empty() || entry["recovered"] == false {
            // A fresh start in this room: the client is at the offset the server reports, and
            // (after a lost history) what it saw before belongs to another epoch.
            log.floor = entry["offset"].as_u64().unwrap_or(0);
            log.offsets.clear();
            log.via.clear();
            log.resync_at.clear();
        }
        log.epoch = epoch;
    }

    fn on_event(&mut self, name: &str, data: &Value) {
        if name == "resync" {
            if let Some(room) = data["room"].as_str() {
                let log = self.rooms.entry(room.to_string()).or_default();
                log.resync_at.push(log.offsets.len());
            }
            self.resyncs.push(data.clone());
            return;
        }
        if let (Some(room), Some(offset)) = (data["room"].as_str(), data["offset"].as_u64()) {
            let log = self.rooms.entry(room.to_string()).or_default();
            log.offsets.push(offset);
            log.via.push(self.reconnects);
        }
    }

    /// Processes events already queued; false if the connection was lost meanwhile.
    async fn drain_queued(&mut self) -> bool {
        while let Some(c) = self.client.as_mut() {
            let Some((name, data)) = c.next_event(Duration::from_millis(1)).await else {
                return true;
            };
            if name == DISCONNECTED {
                return false;
            }
            self.on_event(&name, &data);
        }
        false
    }

    async fn pump_until(&mut self, wanted: &str) -> Option<Value> {
        loop {
            let (name, data) = self.client.as_mut()?.next_event(WAIT).await?;
            if name == wanted {
                return Some(data);
            }
            if name == DISCONNECTED {
                return None;
            }
            self.on_event(&name, &data);
        }
    }

    /// Processes events for `period`, reconnecting whenever the transport is lost.
    pub async fn run_for(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < until {
            let left = until - tokio::time::Instant::now();
            let next = match self.client.as_mut() {
                Some(c) => c.next_event(left.min(Duration::from_millis(200))).await,
                None => Some((DISCONNECTED.to_string(), Value::Null)),
            };
            match next {
                Some((name, _)) if name == DISCONNECTED => {
                    self.client = None;
                    self.reconnects += 1;
                    if let Err(e) = self.establish(WAIT * 3).await {
                        panic!("client {} could not come back: {e}", self.sub);
                    }
                }
                Some((name, data)) => self.on_event(&name, &data),
                None => {}
            }
        }
    }

    /// Reads until every room in `expected` (room → last offset) has reached it, or the deadline.
    pub async fn settle(&mut self, expected: &HashMap<String, u64>) {
        let until = tokio::time::Instant::now() + WAIT * 2;
        while tokio::time::Instant::now() < until {
            let done = expected.iter().all(|(room, last)| {
                self.rooms
                    .get(room)
                    .and_then(|l| l.offsets.last())
                    .copied()
                    .unwrap_or(0)
                    >= *last
            });
            if done {
                return;
            }
            self.run_for(Duration::from_millis(100)).await;
        }
    }

    /// Processes events until a `resync` for `room` arrived; false at the deadline.
    pub async fn wait_resync(&mut self, room: &str) -> bool {
        let until = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < until {
            if self.resyncs.iter().any(|r| r["room"] == room) {
                return true;
            }
            self.run_for(Duration::from_millis(50)).await;
        }
        false
    }

    /// Closes the connection without a reconnect (the test decides when to come back).
    pub async fn go_offline(&mut self) {
        if let Some(c) = self.client.take() {
            c.close().await;
        }
    }

    /// Comes back with positions.
    pub async fn come_back(&mut self) {
        self.reconnects += 1;
        self.establish(WAIT).await.expect("reconnect");
    }

    /// Checks that `room` holds exactly the offsets after the client's starting point up to
    /// `last`, once each, in order. Returns a description of what is wrong, if anything.
    pub fn check(&self, room: &str, last: u64) -> Result<(), String> {
        let log = self
            .rooms
            .get(room)
            .ok_or(format!("{}: never saw room {room}", self.sub))?;
        let want: Vec<u64> = (log.floor + 1..=last).collect();
        if log.offsets == want {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        let dups = log.offsets.iter().filter(|o| !seen.insert(**o)).count();
        let lost = want.iter().filter(|o| !seen.contains(o)).count();
        let disorder = log.offsets.windows(2).filter(|w| w[1] <= w[0]).count();
        let first_bad = log
            .offsets
            .windows(2)
            .position(|w| w[1] != w[0] + 1)
            .unwrap_or(0);
        let window = first_bad.saturating_sub(3)..(first_bad + 4).min(log.offsets.len());
        let context: Vec<(u64, usize)> = log.offsets[window.clone()]
            .iter()
            .copied()
            .zip(log.via[window].iter().copied())
            .collect();
        Err(format!(
            "client {} room {room}: {} received, {lost} lost, {dups} duplicated, {disorder} out of order (floor {}, last {last}); first anomaly near (offset, connection) {context:?}",
            self.sub,
            log.offsets.len(),
            log.floor
        ))
    }
}
