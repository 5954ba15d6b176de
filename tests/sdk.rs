//! The TypeScript SDK (`sdk/`, one npm workspace) against real processes.
//!
//! Each test makes sure `sdk/node_modules` is installed (one `npm ci` at a time, across test
//! threads and processes) and the packages are built (`npm run build`, once per test process),
//! then runs one package's `node --test` files with a deadline: `@realtime-gateway/protocol`
//! (generator, freshness, types under tsc) and `@realtime-gateway/publisher` against a gateway on
//! a real `redis-server`, a rate-limited gateway and a gateway whose Redis is down.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::node::{ensure_npm_installed, run, Outcome};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// Longest an npm script may run before it is killed.
const NPM_DEADLINE: Duration = Duration::from_secs(240);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// `npm <args>` in `sdk/` with `env`, within the deadline.
async fn npm(args: &[&str], env: &[(&str, String)]) -> Outcome {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .current_dir(sdk_dir())
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, NPM_DEADLINE).await
}

/// Fails with the script's output (and `logs`) unless it exited 0.
fn expect_success(what: &str, out: &Outcome, logs: &str) {
    if !out.status.is_some_and(|s| s.success()) {
        panic!(
            "{what} failed ({:?}; None: killed after {NPM_DEADLINE:?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{logs}",
            out.status, out.stdout, out.stderr
        );
    }
    println!("{what}: ok\n{}", out.stdout);
}

/// Installs and builds the workspace once per test process.
async fn prepared() {
    static BUILT: OnceCell<()> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| ensure_npm_installed(&sdk_dir(), "typescript"))
                .await
                .expect("npm ci in sdk/");
            let out = npm(&["run", "build"], &[]).await;
            expect_success("npm run build (tsc -b)", &out, "");
        })
        .await;
}

/// The generated types match catalog/elms.json, the generator refuses bad catalogs with a
/// pointer, and the types compile (with the expected type errors where they must be).
#[tokio::test]
async fn protocol_package() {
    prepared().await;
    let out = npm(&["run", "check:generated"], &[]).await;
    expect_success("npm run check:generated", &out, "");
    let out = npm(&["run", "test:protocol"], &[]).await;
    expect_success("npm run test:protocol", &out, "");
}

/// The publisher in both modes against real gateways and a real Redis, delivering to the stock
/// client; typed errors; bounded retries of `rate_limited` and `bus_unavailable`; tsc refuses a
/// wrong payload field.
#[tokio::test]
async fn publisher_package() {
    prepared().await;
    let redis = common::redis_server::RedisServer::start();
    let redis_url = redis.url();
    let gw = common::Gateway::start(&[("NO_COLOR", "1"), ("REDIS_URL", &redis_url)]);
    let limited = common::Gateway::start(&[("NO_COLOR", "1"), ("GATEWAY_PUBLISH_RATE", "1")]);
    // A Redis URL where nothing listens: the gateway runs, and every publish is bus_unavailable.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dead_url = format!("redis://127.0.0.1:{dead_port}");
    let down = common::Gateway::start(&[
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
    let out = npm(&["run", "test:publisher"], &env).await;
    let logs = format!(
        "--- gateway log ---\n{}\n--- rate-limited gateway log ---\n{}\n--- gateway without Redis log ---\n{}\n--- redis log ---\n{}",
        gw.log(),
        limited.log(),
        down.log(),
        redis.log()
    );
    expect_success("npm run test:publisher", &out, &logs);
}
