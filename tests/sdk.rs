//! The TypeScript SDK (`sdk/`, one npm workspace) against real processes. The workspace is
//! installed (one `npm ci` at a time across test threads and processes) and built once per test
//! process; then each test runs a package's tests with a deadline: `@realtime-gateway/protocol`
//! (generator, freshness, types under tsc), `@realtime-gateway/publisher` against gateways on a
//! real `redis-server`, the client's Node tests (`sdk/client/test`), the React hooks and the demo
//! in Debian's Chromium (`sdk/react/test`, `sdk/demo/e2e`), the size budget and the dispatch
//! benchmark.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::lb::Nginx;
use common::redis_server::RedisServer;
use common::static_site::StaticSite;
use common::Gateway;

/// Longest the client's test file may run.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// Positions, de-duplication, shared rooms, re-join after a reconnect, token refresh before
/// `exp`, refused tokens and resync, with the real `socket.io-client` against a real gateway.
#[tokio::test]
async fn sdk_client() {
    let gw = common::Gateway::start(&[("NO_COLOR", "1")]);
    gw.wait_readyz(200).await;
    common::sdk::node(
        &[
            "--test",
            "--test-reporter=spec",
            "client/test/client.test.mjs",
        ],
        &[
            ("GATEWAY_URL", gw.url()),
            ("JWT_SECRET", common::SECRET.to_string()),
            ("PUBLISH_KEY", common::KEY.to_string()),
        ],
        CLIENT_DEADLINE,
        || format!("--- gateway log ---\n{}", gw.log()),
    )
    .await;
}

/// Longest a browser script may run.
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);
/// Longest a browser script may take to reach its next step.
const STEP_DEADLINE: Duration = Duration::from_secs(90);

/// A node script of `sdk/demo/e2e` that drives Chromium, reports steps (JSON lines on stdout)
/// and reads answers on stdin. It runs in its own process group (node and the browser), killed
/// as a whole when dropped; its stderr (the page's console) goes to a file shown on failure.
struct Driven {
    child: std::process::Child,
    steps: std::sync::mpsc::Receiver<serde_json::Value>,
    stderr: tempfile::NamedTempFile,
    started: std::time::Instant,
}

impl Driven {
    fn start(script: &str, env: &[(&str, String)]) -> Driven {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .current_dir(common::sdk::sdk_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NO_COLOR", "1")
            .env_remove("NODE_OPTIONS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"))
            .process_group(0)
            .spawn()
            .expect("node must be on the PATH");
        let out = child.stdout.take().expect("stdout");
        let (tx, steps) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => println!("[script] {line}"),
                }
            }
        });
        Driven {
            child,
            steps,
            stderr,
            started: std::time::Instant::now(),
        }
    }

    /// The script's stderr so far (the page's console, node's errors).
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// Waits for step `name` (blocking this worker thread; the test runs on several); panics
    /// with `logs()` and the script's stderr on a failure report, an exit or the deadline.
    fn next(&self, name: &str, logs: &dyn Fn() -> String) -> serde_json::Value {
        let fail = |why: String| -> ! {
            panic!(
                "{why} after {:?}\n--- script stderr ---\n{}\n{}",
                self.started.elapsed(),
                self.stderr(),
                logs()
            )
        };
        let deadline = std::time::Instant::now() + STEP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = tokio::task::block_in_place(|| self.steps.recv_timeout(left))
                .unwrap_or_else(|_| fail(format!("the browser script never reported {name}")));
            println!("step {v}");
            if v["step"] == "failed" {
                fail(format!(
                    "the browser script failed: {}",
                    v["error"].as_str().unwrap_or_default()
                ));
            }
            if v["step"] == name {
                return v;
            }
            if self.started.elapsed() > BROWSER_DEADLINE {
                fail("the browser script ran past its deadline".into());
            }
        }
    }

    /// Writes one JSON line to the script's stdin.
    fn answer(&mut self, v: serde_json::Value) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{v}").expect("write to the browser script");
    }

    /// Waits for the script to exit; panics unless it succeeded.
    fn finish(mut self, logs: &dyn Fn() -> String) {
        let deadline = std::time::Instant::now() + STEP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                if !status.success() {
                    panic!(
                        "the browser script exited with {status}\n{}\n{}",
                        self.stderr(),
                        logs()
                    );
                }
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the browser script did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Its own process group: node and the browser it started.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Percent-encodes `s` for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The built demo (`sdk/demo/dist`) on a site of its own, with the application API it queries:
/// `GET /api/batches/:id` answers `{ fetches }` and counts every fetch.
async fn demo_site() -> (StaticSite, Arc<AtomicU64>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = fetches.clone();
    let api = axum::Router::new().route(
        "/api/batches/{id}",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { axum::Json(serde_json::json!({ "fetches": n })) }
        }),
    );
    let dist = common::sdk::sdk_dir().join("demo").join("dist");
    let site = StaticSite::start_with(api, &[], Some(dist)).await;
    (site, fetches)
}

/// Settings of the browser tests' gateways: on `redis`, serving development tokens, open to
/// the demo's `origin`, keeping enough history for the whole scenario.
fn browser_env(redis: &RedisServer, origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NO_COLOR", "1".into()),
        ("REDIS_URL", redis.url()),
        ("GATEWAY_DEV", "true".into()),
        ("GATEWAY_CORS_ORIGINS", origin.to_string()),
        ("GATEWAY_HISTORY_MAX_LEN", "1000".into()),
        ("GATEWAY_DRAIN_DELAY", "0s".into()),
    ]
}

fn start_gateway(listen: &str, env: &[(&'static str, String)]) -> Gateway {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start_at(listen, &env)
}

/// Index of the live gateway holding a connection (the page's: the only socket), given every
/// gateway's admin address.
async fn holder(admins: Vec<std::net::SocketAddr>, dead: &[usize]) -> usize {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        for (i, admin) in admins.iter().enumerate() {
            if dead.contains(&i) {
                continue;
            }
            let Ok(resp) = reqwest::get(format!("http://{admin}/metrics")).await else {
                continue;
            };
            let text = resp.text().await.unwrap_or_default();
            if common::metric(&text, "gateway_connections", "") > 0.0 {
                return i;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gateway holds the page's connection"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The demo in Chromium from another origin, through nginx in front of three gateways on one
/// Redis, with the SDK's default transports: events render and the batch query refetches once
/// per event; short tokens are refreshed without leaving `connected`; the gateway holding the
/// page is SIGKILLed while events are published and the page lists every event once, in order,
/// without a reload; Redis flushed and that gateway restarted, the page refetches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_demo_in_chromium() {
    common::sdk::prepare(true).await;
    let (site, fetches) = demo_site().await;
    let redis = RedisServer::start();
    let env = browser_env(&redis, &site.origin());
    let gws: Vec<Gateway> = (0..3).map(|_| start_gateway("127.0.0.1:0", &env)).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    let nginx = Nginx::start(&gws.iter().map(|g| g.public).collect::<Vec<_>>());
    // Shared with the failure report, which reads every log.
    let gws = std::cell::RefCell::new(gws);
    // Tokens of 4 s: refreshed every few seconds while the page is open.
    let page = demo_page(&site, "index.html", &nginx.url(), "4s");
    let mut script = Driven::start(
        "demo/e2e/cluster.mjs",
        &[("PAGE_URL", page), ("PUBLISH_KEY", common::KEY.to_string())],
    );
    let logs = || {
        let mut out: String = gws
            .borrow()
            .iter()
            .enumerate()
            .map(|(i, g)| format!("--- gateway {i} ({}) ---\n{}", g.public, g.log()))
            .collect();
        out.push_str(&nginx.log());
        out
    };

    script.next("publish_url", &logs);
    script.answer(serde_json::json!({ "publish": gws.borrow()[0].url() }));
    script.next("events_ok", &logs);
    println!(
        "fetches after the events: {}",
        fetches.load(Ordering::SeqCst)
    );
    script.next("token_ok", &logs);

    script.next("kill_ready", &logs);
    let admins: Vec<_> = gws.borrow().iter().map(|g| g.admin).collect();
    let victim = holder(admins.clone(), &[]).await;
    let survivor = (victim + 1) % 3;
    let url = gws.borrow()[survivor].url();
    script.answer(serde_json::json!({ "publish": url }));
    script.next("kill_now", &logs);
    gws.borrow_mut()[victim].kill();
    script.next("kill_ok", &logs);

    script.next("flush_ready", &logs);
    let holding = holder(admins, &[victim]).await;
    redis.cli(&["FLUSHALL"]);
    let addr = gws.borrow()[holding].public.to_string();
    gws.borrow_mut()[holding].kill();
    let restarted = start_gateway(&addr, &env);
    restarted.wait_readyz(200).await;
    gws.borrow_mut()[holding] = restarted;
    let publisher = (0..3).find(|i| *i != victim).expect("a live gateway");
    let url = gws.borrow()[publisher].url();
    script.answer(serde_json::json!({ "publish": url }));
    let done = script.next("flush_ok", &logs);
    println!("refetches after the flush: {}", done["refetched"]);
    script.finish(&logs);
}

/// The URL of a demo page on `site` connecting to `gateway` with development tokens of `ttl`.
fn demo_page(site: &StaticSite, page: &str, gateway: &str, ttl: &str) -> String {
    let token_url = format!("{gateway}/dev/token?sub=10&institution=1&role=ADMIN&ttl={ttl}");
    format!(
        "{}/{page}?gateway={}&tokenUrl={}&api={}",
        site.origin(),
        encode(gateway),
        encode(&token_url),
        encode(&site.url("/api")),
    )
}

/// Dispatching one event to 100 hooks in Chromium: reports the cost per event (live events from
/// a real gateway, and a synthetic loop); asserts only that every hook got every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_dispatch_benchmark() {
    common::sdk::prepare(true).await;
    let (site, _) = demo_site().await;
    let redis = RedisServer::start();
    let env = browser_env(&redis, &site.origin());
    let gw = start_gateway("127.0.0.1:0", &env);
    gw.wait_readyz(200).await;
    let script = Driven::start(
        "demo/e2e/bench.mjs",
        &[
            ("PAGE_URL", demo_page(&site, "bench.html", &gw.url(), "1h")),
            ("PUBLISH_URL", gw.url()),
            ("PUBLISH_KEY", common::KEY.to_string()),
        ],
    );
    let logs = || gw.log();
    let result = script.next("result", &logs);
    println!("dispatch to 100 hooks: {result}");
    script.finish(&logs);
}

/// @realtime-gateway/client and @realtime-gateway/react together, minified and gzipped, without
/// socket.io-client, React and TanStack Query, stay within 6 KiB (`sdk/scripts/size.mjs`).
#[tokio::test]
async fn sdk_size_budget() {
    let out = common::sdk::node(&["scripts/size.mjs"], &[], CLIENT_DEADLINE, String::new).await;
    assert!(out.contains("budget (client + react, gzipped)"), "{out}");
}

/// The React bindings in Chromium against a real gateway: latest handlers without
/// resubscribing, one join under StrictMode, `enabled`, nothing left after unmount, and an
/// owned client's one connection closed on unmount, positions kept across a reload
/// (`sdk/react/test/hooks.browser.test.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_react_hooks_in_chromium() {
    common::sdk::prepare(true).await;
    // The browser script bundles its page into this directory; a site of its own serves it.
    let pages = tempfile::tempdir().expect("temp dir");
    let site = StaticSite::start(&[], Some(pages.path().to_path_buf())).await;
    let gw = common::Gateway::start(&[("NO_COLOR", "1"), ("GATEWAY_CORS_ORIGINS", &site.origin())]);
    gw.wait_readyz(200).await;
    common::sdk::node(
        &[
            "--test",
            "--test-reporter=spec",
            "react/test/hooks.browser.test.mjs",
        ],
        &[
            ("GATEWAY_URL", gw.url()),
            ("ADMIN_URL", format!("http://{}", gw.admin)),
            ("TOKEN", common::token("10", "1", "ADMIN", 3600)),
            ("PUBLISH_KEY", common::KEY.to_string()),
            ("PAGE_DIR", pages.path().display().to_string()),
            ("PAGE_URL", site.url("/index.html")),
        ],
        BROWSER_DEADLINE,
        || format!("--- gateway log ---\n{}", gw.log()),
    )
    .await;
}

/// Longest an npm test script may run.
const NPM_DEADLINE: Duration = Duration::from_secs(240);

/// The generated types match catalog/elms.json, the generator refuses bad catalogs with a
/// pointer, and the types compile (with the expected type errors where they must be).
#[tokio::test]
async fn protocol_package() {
    common::sdk::npm(&["run", "check:generated"], &[], NPM_DEADLINE, String::new).await;
    common::sdk::npm(&["run", "test:protocol"], &[], NPM_DEADLINE, String::new).await;
}

/// The publisher in both modes against real gateways and a real Redis, delivering to the stock
/// client; typed errors; bounded retries of `rate_limited` and `bus_unavailable`; tsc refuses a
/// wrong payload field.
#[tokio::test]
async fn publisher_package() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let gw = Gateway::start(&[("NO_COLOR", "1"), ("REDIS_URL", &redis_url)]);
    let limited = Gateway::start(&[("NO_COLOR", "1"), ("GATEWAY_PUBLISH_RATE", "1")]);
    // A Redis URL where nothing listens: the gateway runs, and every publish is bus_unavailable.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dead_url = format!("redis://127.0.0.1:{dead_port}");
    let down = Gateway::start(&[
        ("NO_COLOR", "1"),
        ("REDIS_URL", &dead_url),
        ("GATEWAY_REDIS_TIMEOUT", "300ms"),
    ]);
    gw.wait_readyz(200).await;
    limited.wait_readyz(200).await;
    down.wait_readyz(503).await;
    let env = [
        ("GATEWAY_URL", gw.url()),
        ("LIMITED_URL", limited.url()),
        ("DOWN_URL", down.url()),
        ("REDIS_URL", redis_url.clone()),
        ("PUBLISH_KEY", common::KEY.to_owned()),
        ("JWT_SECRET", common::SECRET.to_owned()),
    ];
    common::sdk::npm(&["run", "test:publisher"], &env, NPM_DEADLINE, || {
        format!(
            "--- gateway log ---\n{}\n--- rate-limited gateway log ---\n{}\n--- gateway without Redis log ---\n{}\n--- redis log ---\n{}",
            gw.log(),
            limited.log(),
            down.log(),
            redis.log()
        )
    })
    .await;
}
