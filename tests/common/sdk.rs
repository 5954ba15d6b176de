//! The TypeScript SDK (`sdk/`, one npm workspace): installed and built once per test process,
//! then its Node test files or scripts run against real gateways with a deadline.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::node::{ensure_installed_in, run_with_deadline, tests_dir};

/// Longest the SDK build may take.
const BUILD_DEADLINE: Duration = Duration::from_secs(300);

/// `sdk/`.
pub fn sdk_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Installs the workspace if needed (`npm ci`) and builds every package and the demo
/// (`npm run build`), once per test process: a build is cheap next to testing stale code.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = sdk_dir();
        ensure_installed_in(&dir);
        let mut child = Command::new("npm")
            .args(["run", "build", "--silent"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("npm must be on the PATH");
        let deadline = std::time::Instant::now() + BUILD_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for npm") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("npm run build in sdk/ did not finish in {BUILD_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "npm run build in sdk/ failed: {status:?}");
    });
}

/// Builds the SDK and installs `tests/browser` (Chromium through playwright-core).
pub async fn prepare(browser: bool) {
    tokio::task::spawn_blocking(move || {
        ensure_built();
        if browser {
            ensure_installed_in(&tests_dir("browser"));
        }
    })
    .await
    .expect("prepare the SDK");
}

/// Runs `node <args>` in `sdk/` with `env` and a deadline; returns its stdout, or panics with its
/// output and `logs()` (the logs of the processes it talked to) unless it exits 0.
pub async fn node(
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
    logs: impl FnOnce() -> String,
) -> String {
    run_in_sdk("node", args, env, deadline, logs).await
}

/// Runs `npm <args>` in `sdk/` (e.g. `run test:publisher`) like [`node`].
pub async fn npm(
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
    logs: impl FnOnce() -> String,
) -> String {
    run_in_sdk("npm", args, env, deadline, logs).await
}

async fn run_in_sdk(
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
    logs: impl FnOnce() -> String,
) -> String {
    prepare(false).await;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(sdk_dir())
        .env("NO_COLOR", "1")
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = run_with_deadline(cmd, deadline).await;
    let verdict = match out.status {
        Some(s) if s.success() => None,
        Some(s) => Some(format!("{program} {args:?} failed ({s})")),
        None => Some(format!("{program} {args:?} was killed after {deadline:?}")),
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
        "{program} {args:?}: ok in {:?}\n{}",
        started.elapsed(),
        out.stdout
    );
    out.stdout
}
