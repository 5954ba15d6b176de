//! Browser tier: Debian's Chromium (driven by playwright-core from `tests/browser`) runs the
//! stock socket.io-client browser bundle on a page served from another origin than the
//! gateways: three gateways on a private Redis, one reached directly, all of them through
//! nginx (deploy/nginx) and through HAProxy (deploy/haproxy, cookie affinity); and
//! permessage-deflate negotiated by Chromium with compressed events arriving intact. See
//! `tests/browser/cross-origin.test.mjs` for the cases.
//!
//! The page's site is bound before the gateways start, so its origin goes into their
//! GATEWAY_CORS_ORIGINS; a second site on another port is the origin that is not allowed.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::lb::{Haproxy, Nginx};
use common::node::{ensure_installed_in, run_with_deadline, tests_dir};
use common::redis_server::RedisServer;
use common::static_site::StaticSite;
use common::Gateway;
use tokio::process::Command;
use tokio::time::Instant;

/// Longest the browser test file may run before it is killed (with the browser).
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

/// `tests/browser`, with its node_modules installed.
async fn browser_dir() -> PathBuf {
    let dir = tests_dir("browser");
    let install = dir.clone();
    tokio::task::spawn_blocking(move || ensure_installed_in(&install))
        .await
        .expect("npm ci in tests/browser");
    dir
}

/// The test page and the stock client's browser bundle, on a site of its own.
async fn test_page_site(dir: &std::path::Path) -> StaticSite {
    StaticSite::start(
        &[
            ("/client.html", dir.join("pages/client.html")),
            ("/client.js", dir.join("pages/client.js")),
            (
                "/socket.io.min.js",
                dir.join("node_modules/socket.io-client/dist/socket.io.min.js"),
            ),
        ],
        None,
    )
    .await
}

async fn ready_gateway(env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![("NO_COLOR", "1")];
    all.extend_from_slice(env);
    let gw = Gateway::start(&all);
    gw.wait_readyz(200).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_client_in_chromium_from_another_origin() {
    let dir = browser_dir().await;
    let page = test_page_site(&dir).await;
    let other = test_page_site(&dir).await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let origins = format!("{},https://app.example.com", page.origin());
    let env = [
        ("REDIS_URL", redis_url.as_str()),
        ("GATEWAY_CORS_ORIGINS", origins.as_str()),
    ];
    let gws = [
        ready_gateway(&env).await,
        ready_gateway(&env).await,
        ready_gateway(&env).await,
    ];
    let upstreams = gws.iter().map(|g| g.public).collect::<Vec<_>>();
    let nginx = Nginx::start(&upstreams);
    let haproxy = Haproxy::start(&upstreams);

    // A development gateway (no list: every origin) for the page's /dev/token fetch.
    let dev = ready_gateway(&[("GATEWAY_DEV", "true")]).await;

    let token = common::token("10", "1", "ADMIN", 3600);
    let admin_urls = gws
        .iter()
        .map(|g| format!("http://{}", g.admin))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=spec", "cross-origin.test.mjs"])
        .current_dir(&dir)
        .env("PAGE_URL", page.url("/client.html"))
        .env("OTHER_PAGE_URL", other.url("/client.html"))
        .env("DIRECT_URL", gws[0].url())
        .env("DEV_URL", dev.url())
        .env("NGINX_URL", nginx.url())
        .env("HAPROXY_URL", haproxy.url())
        .env("HAPROXY_LOG", haproxy.request_log_path())
        .env("PUBLISH_URL", gws[2].url())
        .env("ADMIN_URLS", admin_urls)
        .env("NGINX_ACCESS_LOG", nginx.access_log_path())
        .env("TOKEN", token)
        .env("PUBLISH_KEY", common::KEY)
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT");
    let started = Instant::now();
    let out = run_with_deadline(cmd, BROWSER_DEADLINE).await;
    let verdict = match out.status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("the browser tests failed ({s})")),
        None => Some(format!(
            "the browser tests did not finish within {BROWSER_DEADLINE:?} and were killed"
        )),
    };
    if let Some(verdict) = verdict {
        let logs: String = gws
            .iter()
            .enumerate()
            .map(|(i, g)| format!("--- gateway {i} ({}) log ---\n{}", g.public, g.log()))
            .collect();
        panic!(
            "{verdict} after {:?}\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n{logs}\n{}\n{}",
            started.elapsed(),
            out.stdout,
            out.stderr,
            nginx.log(),
            haproxy.log()
        );
    }
    println!(
        "browser tests: ok in {:?}\n{}",
        started.elapsed(),
        out.stdout
    );
}
