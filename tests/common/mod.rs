//! Test harness: starts real gateway processes on free ports, mints tokens, publishes over
//! HTTP, and keeps every process's log so a failing test shows what the gateway said.
#![allow(dead_code)]

pub mod client;
pub mod engine_io;
pub mod lb;
pub mod node;
pub mod prometheus;
pub mod publish;
pub mod redis_cluster;
pub mod redis_server;
pub mod resilient;
pub mod sdk;
pub mod static_site;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use client::Client;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

/// Secret every test gateway verifies tokens with (unless a test overrides JWT_SECRET).
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// Publish API key of every test gateway.
pub const KEY: &str = "test-publish-key-0123456789";
/// Deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(400);

/// Settings every gateway could inherit from the developer's shell; cleared so tests are hermetic.
const INHERITED: &[&str] = &[
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ALGORITHM",
    "PUBLISH_API_KEYS",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "GATEWAY_DEV",
    "GATEWAY_LISTEN",
    "GATEWAY_ADMIN_LISTEN",
    "GATEWAY_STRICT_CATALOG",
    "GATEWAY_CATALOG",
    "GATEWAY_AUTH_GRACE",
    "GATEWAY_LOG",
    "GATEWAY_LOG_FORMAT",
    "GATEWAY_ROOM_KINDS",
    "GATEWAY_ROOM_ROLES",
    "GATEWAY_MAX_ROOMS_PER_SOCKET",
    "GATEWAY_PRESENCE_KINDS",
    "GATEWAY_PRESENCE_EVENTS",
    "GATEWAY_PRESENCE_MAX_MEMBERS",
    "GATEWAY_PRESENCE_LEASE",
    "GATEWAY_LIFECYCLE",
    "GATEWAY_LIFECYCLE_MAX_LEN",
    "GATEWAY_NAME",
];

/// A running gateway process, killed when dropped.
pub struct Gateway {
    child: Child,
    /// Public address (Socket.IO, publish API, health).
    pub public: SocketAddr,
    /// Admin address (`/metrics`).
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The thread copying stderr into `log`; it ends when the process's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The gateway binary built by cargo for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_realtime-gateway")
}

impl Gateway {
    /// Starts a gateway with the test secret and key plus `env` (which may override them).
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        Self::start_at("127.0.0.1:0", env)
    }

    /// Starts a gateway whose public listener binds `listen` (e.g. a port a previous gateway
    /// used, for restarts behind a load balancer).
    pub fn start_at(listen: &str, env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(binary());
        for name in INHERITED {
            cmd.env_remove(name);
        }
        cmd.args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .env("GATEWAY_DRAIN_DELAY", "0s")
            // Load tests publish fast; the rate limit has its own test.
            .env("GATEWAY_PUBLISH_RATE", "1000000")
            .env("GATEWAY_DRAIN_PERIOD", "200ms")
            .env("JWT_SECRET", SECRET)
            .env("PUBLISH_API_KEYS", KEY)
            .env("GATEWAY_LOG", "info,realtime_gateway=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if line.contains("listening") {
                    // Human format: `public=ADDR admin=ADDR`; JSON format: `"fields":{...}`.
                    let json: Option<Value> = serde_json::from_str(&line).ok();
                    let addr = |k: &str| {
                        let text = match &json {
                            Some(v) => v["fields"][k].as_str().map(String::from),
                            None => line
                                .split_whitespace()
                                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(String::from)),
                        };
                        text.and_then(|a| a.parse::<SocketAddr>().ok())
                    };
                    if let (Some(p), Some(a)) = (addr("public"), addr("admin")) {
                        let _ = tx.send((p, a));
                    }
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((public, admin)) => Gateway {
                child,
                public,
                admin,
                log,
                reader: Some(reader),
            },
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start; its log:\n{}", log.lock().unwrap());
            }
        }
    }

    /// Polls `/readyz` until it answers `status`, up to the deadline; panics with the log if not.
    pub async fn wait_readyz(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = reqwest::get(format!("{}/readyz", self.url()))
                .await
                .map(|r| r.status().as_u16());
            if now.as_ref().ok() == Some(&status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status} (last: {now:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (with a deadline) for the process to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Its last lines may still be in the pipe: the log is whole once stderr closed.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes `body` with the test key; returns status and JSON body.
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        self.post(
            "/v1/publish",
            Some(KEY),
            "application/json",
            body.to_string(),
        )
        .await
    }

    /// A raw POST to the public listener.
    pub async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: String,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.url()))
            .header("content-type", content_type)
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.expect("publish request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A GET on the public listener: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.url()))
            .await
            .expect("get");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Polls `/metrics` until `ready` holds for the page, up to the deadline; panics with
    /// `what` and the last page if it never does. Returns that page.
    pub async fn wait_metrics(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.metrics().await;
            if ready(&m) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {WAIT:?}\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Connects a client authenticated as `sub` of `tenant` and waits for `authenticated`.
    pub async fn client(&self, sub: &str, tenant: &str, role: &str) -> Client {
        let mut c = Client::connect(
            &self.url(),
            Some(json!({ "token": token(sub, tenant, role, 3600) })),
        )
        .await
        .expect("connect");
        let auth = c.wait_for("authenticated", WAIT).await;
        assert!(auth.is_some(), "no authenticated event:\n{}", self.log());
        c
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- gateway {} log ----\n{}", self.public, self.log());
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `sub` of `tenant` with `role`, valid for `ttl` seconds from now.
pub fn token(sub: &str, tenant: &str, role: &str, ttl: i64) -> String {
    sign(
        &json!({ "sub": sub, "institutionId": tenant, "role": role, "exp": now() + ttl }),
        SECRET,
    )
}

/// A valid `batch_created` publish request for `tenant`, addressed to `rooms`.
pub fn batch_created(tenant: i64, rooms: &[&str], batch: i64) -> Value {
    json!({
        "channel": "batch_update",
        "event": "batch_created",
        "institutionId": tenant,
        "rooms": rooms,
        "payload": {
            "batchId": batch, "batchNumber": format!("B-{batch}"), "examId": 100, "examName": "Finals",
            "courseCode": "CS101", "totalSlots": 30, "createdBy": 7, "createdByName": "Registrar",
            "institutionId": tenant
        }
    })
}

/// Reads one metric's value (sum over label sets matching `labels`, e.g. `reason="token_expired"`).
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Removes terminal colour codes from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the escape sequence (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `realtime-gateway publish` against `url` with the test key; `room` is optional.
pub fn cli_publish(
    url: &str,
    channel: &str,
    event: &str,
    payload: &str,
    room: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args([
        "publish",
        "--url",
        url,
        "--key",
        KEY,
        "--channel",
        channel,
        "--event",
        event,
    ])
    .args(["--institution", "1", "--payload", payload]);
    if let Some(room) = room {
        cmd.args(["--room", room]);
    }
    cmd.output().expect("run the CLI")
}
