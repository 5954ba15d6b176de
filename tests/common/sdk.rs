//! The TypeScript SDK (`sdk/`, one npm workspace): installed and built once per test process,
//! then its Node test files or scripts run against real gateways with a deadline.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::node::{npm, run, with_install_lock};

/// `sdk/`.
pub fn sdk_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Whether `sdk/node_modules` holds a complete install.
fn installed(dir: &std::path::Path) -> bool {
    dir.join("node_modules/.package-lock.json").is_file()
        && dir
            .join("node_modules/socket.io-client/package.json")
            .is_file()
}

/// Installs the workspace if needed (`npm ci`) and builds every package (`npm run build`), once
/// per test process: a build is cheap next to testing stale code.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = sdk_dir();
        with_install_lock(&dir, || {
            if !installed(&dir) {
                npm(&dir, &["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
            }
            npm(&dir, &["run", "build", "--silent"]);
        });
    });
}

/// Runs `node <args>` in `sdk/` with `env` and a deadline; returns its stdout, or panics with its
/// output and `logs` (the logs of the processes it talked to) unless it exits 0.
pub async fn node(
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
    logs: impl FnOnce() -> String,
) -> String {
    tokio::task::spawn_blocking(ensure_built)
        .await
        .expect("build the SDK");
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(args)
        .current_dir(sdk_dir())
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = run(cmd, deadline).await;
    let verdict = match out.status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("node {args:?} failed ({s})")),
        None => Some(format!("node {args:?} was killed after {deadline:?}")),
    };
    if let Some(verdict) = verdict {
        panic!(
            "{verdict} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            started.elapsed(),
            out.stdout,
            out.stderr,
            logs()
        );
    }
    println!(
        "node {args:?}: ok in {:?}\n{}",
        started.elapsed(),
        out.stdout
    );
    out.stdout
}
