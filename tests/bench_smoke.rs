//! Smoke of the benchmark harness (`bench/`): a tiny fan-out (scenario 2) through the real
//! `rtg-loadgen` binary, on a direct WebSocket with and without permessage-deflate, on
//! long-polling, and on polling upgraded to WebSocket (the stock client's default), and the wire
//! sizes of the catalog events, so the harness cannot rot. It asserts that every event reached
//! every client exactly once, never a speed.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use common::redis_server::RedisServer;
use common::{Gateway, SECRET};
use serde_json::Value;

/// One fan-out: how many clients on which transport get how many events.
struct Fanout {
    transport: &'static str,
    deflate: bool,
    clients: u64,
    events: u64,
}

/// The direct WebSocket fan-out.
const WEBSOCKET: Fanout = Fanout {
    transport: "websocket",
    deflate: false,
    clients: 300,
    events: 200,
};

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtg-loadgen"))
}

/// The `clients` process, killed if the test fails half-way.
struct Clients {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Clients {
    /// The next JSON line the generator prints.
    fn next(&mut self, what: &str) -> Value {
        let line = self
            .lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("rtg-loadgen clients ended before its {what} line"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what} line {line:?}: {e}"))
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- rtg-loadgen clients stderr ----\n{log}");
        }
    }
}

#[tokio::test]
async fn fanout_delivers_every_event_to_every_client_once() {
    fanout(WEBSOCKET).await;
}

/// The same with every client offering permessage-deflate (a client whose offer is not taken up
/// fails its handshake, so `held` proves the negotiation) and inflating what it gets.
#[tokio::test]
async fn fanout_with_compression_delivers_every_event_to_every_client_once() {
    fanout(Fanout {
        deflate: true,
        ..WEBSOCKET
    })
    .await;
}

/// Long-polling only: every delivery comes in the answer of a long-poll GET (several packets
/// joined by `\x1e` when they queue up), pings are answered by POST.
#[tokio::test]
async fn polling_fanout_delivers_every_event_to_every_client_once() {
    fanout(Fanout {
        transport: "polling",
        deflate: false,
        clients: 20,
        events: 10,
    })
    .await;
}

/// Polling, then the WebSocket upgrade with the session's `sid` (`2probe`, `3probe`, `5`) while a
/// long-poll is open; a client whose upgrade fails fails its handshake, so `held` proves it.
#[tokio::test]
async fn upgraded_fanout_delivers_every_event_to_every_client_once() {
    fanout(Fanout {
        transport: "upgrade",
        deflate: false,
        clients: 20,
        events: 10,
    })
    .await;
}

#[test]
fn sizes_of_every_catalog_event_in_every_encoding() {
    let out = loadgen()
        .arg("sizes")
        .output()
        .expect("run rtg-loadgen sizes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("sizes report");
    let events = report["events"].as_array().expect("events");
    assert_eq!(events.len(), 17, "{report}");
    for e in events {
        let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k}: {e}"));
        // Every catalog event's JSON frame is above the 256-byte threshold and shrinks; a
        // msgpack frame below it goes plain.
        assert!(n("json") > 256, "{e}");
        assert!(n("json_deflate") < n("json"), "{e}");
        assert!(n("msgpack") < n("json"), "{e}");
        assert!(n("msgpack_deflate") <= n("msgpack"), "{e}");
        if n("msgpack") > 260 {
            assert!(n("msgpack_deflate") < n("msgpack"), "{e}");
        }
    }
}

async fn fanout(f: Fanout) {
    let redis = RedisServer::start();
    let gw = Gateway::start(&[("REDIS_URL", &redis.url())]);
    gw.wait_readyz(200).await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("clients.log");
    let mut child = loadgen()
        .args(["clients", "--target", &gw.public.to_string()])
        .args(["-n", &f.clients.to_string(), "--join", "batch:1"])
        .args(["--expect-events", &f.events.to_string(), "--hold", "40"])
        .args(["--ramp", "1000", "--pid", &gw.pid().to_string()])
        .args(["--transport", f.transport])
        .args(f.deflate.then_some("--deflate"))
        .env("JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn rtg-loadgen clients");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut clients = Clients {
        child,
        lines,
        log,
        _dir: dir,
    };

    let ready = clients.next("ready");
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["connections"]["transport"], f.transport, "{ready}");
    assert_eq!(
        ready["connections"]["held"].as_u64(),
        Some(f.clients),
        "not every client connected and joined: {ready}\n{}",
        gw.log()
    );

    let out = loadgen()
        .args(["publish", "--redis", &redis.url(), "--room", "batch:1"])
        .args(["--count", &f.events.to_string(), "--rate", "500"])
        .output()
        .expect("run rtg-loadgen publish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "publish failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: Value = serde_json::from_str(stdout.trim()).expect("publish report");
    assert_eq!(published["ok"].as_u64(), Some(f.events), "{published}");
    assert_eq!(published["errors"].as_u64(), Some(0), "{published}");

    let report = clients.next("final");
    assert_eq!(report["type"], "final", "{report}");
    let d = &report["deliveries"];
    let expected = f.clients * f.events;
    assert_eq!(d["expected"].as_u64(), Some(expected), "{report}");
    assert_eq!(d["lost"].as_u64(), Some(0), "{report}\n{}", gw.log());
    assert_eq!(d["duplicated"].as_u64(), Some(0), "{report}");
    assert_eq!(d["received"].as_u64(), Some(expected), "{report}");
    assert_eq!(d["without_timestamp"].as_u64(), Some(0), "{report}");
    assert_eq!(report["latency_ms"]["count"].as_u64(), Some(expected));
    assert_eq!(report["connections"]["dropped"].as_u64(), Some(0));
    let status = clients.child.wait().expect("wait for rtg-loadgen clients");
    assert!(status.success(), "rtg-loadgen clients exited with {status}");
}
