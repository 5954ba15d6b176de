//! Node packages of the tests (`tests/node`: the official `socket.io-client`; `tests/browser`:
//! Chromium through playwright-core): installs them once with `npm ci`, runs a script from
//! `tests/node` that reports its progress as one JSON object per line on stdout, and runs
//! `node --test` files with a deadline.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use serde_json::Value;

use super::WAIT;

/// Longest an `npm ci` may run, and how long another process may wait for one.
const INSTALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// `tests/node`.
pub fn node_dir() -> std::path::PathBuf {
    tests_dir("node")
}

/// `tests/<name>`.
pub fn tests_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// Written by npm as the last step of an install: its presence (and that of `marker`, a
/// package the directory depends on) means node_modules is complete.
fn installed(dir: &std::path::Path, marker: &str) -> bool {
    dir.join("node_modules")
        .join(".package-lock.json")
        .is_file()
        && dir
            .join("node_modules")
            .join(marker)
            .join("package.json")
            .is_file()
}

/// Makes sure `tests/node/node_modules` is installed (see [`ensure_installed_in`]).
pub fn ensure_installed() {
    ensure_installed_in(&node_dir());
}

/// Makes sure `dir/node_modules` is installed, running `npm ci` if not. Creating the lock
/// directory is atomic, so of all test threads and processes exactly one installs; the others
/// wait, with a deadline, for the lock to go away.
pub fn ensure_installed_in(dir: &std::path::Path) {
    ensure_npm_installed(dir, "socket.io-client");
}

/// Makes sure `dir/node_modules` is installed with `marker` among its packages (see
/// [`ensure_installed_in`]).
pub fn ensure_npm_installed(dir: &std::path::Path, marker: &str) {
    let dir = dir.to_path_buf();
    let lock = dir.join(".install-lock");
    let give_up = std::time::Instant::now() + INSTALL_DEADLINE + std::time::Duration::from_secs(30);
    loop {
        if !lock.exists() && installed(&dir, marker) {
            return;
        }
        match std::fs::create_dir(&lock) {
            Ok(()) => {
                struct Unlock(std::path::PathBuf);
                impl Drop for Unlock {
                    fn drop(&mut self) {
                        let _ = std::fs::remove_dir(&self.0);
                    }
                }
                let _unlock = Unlock(lock.clone());
                if installed(&dir, marker) {
                    return;
                }
                let mut child = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir)
                    .spawn()
                    .expect("npm must be on the PATH");
                let deadline = std::time::Instant::now() + INSTALL_DEADLINE;
                let status = loop {
                    if let Some(status) = child.try_wait().expect("wait for npm") {
                        break status;
                    }
                    if std::time::Instant::now() > deadline {
                        let _ = child.kill();
                        panic!(
                            "npm ci in {} did not finish in {INSTALL_DEADLINE:?}",
                            dir.display()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                };
                assert!(
                    status.success() && installed(&dir, marker),
                    "npm ci in {} failed: {status:?}",
                    dir.display()
                );
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A lock older than any install can take was left by a killed process.
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > INSTALL_DEADLINE + std::time::Duration::from_secs(60));
                if stale {
                    let _ = std::fs::remove_dir(&lock);
                    continue;
                }
                assert!(
                    std::time::Instant::now() < give_up,
                    "{} still exists: another test process is installing node modules, or one died doing so",
                    lock.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("cannot create {}: {e}", lock.display()),
        }
    }
}

/// A running script: its process and its reported steps.
pub struct Script {
    /// The node process.
    pub child: Child,
    steps: Receiver<Value>,
}

impl Script {
    /// Starts `node <script>` in `tests/node` with `env`.
    pub fn start(script: &str, env: &[(&str, String)]) -> Script {
        ensure_installed();
        let dir = node_dir();
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .expect("node must be on the PATH");
        let out = child.stdout.take().unwrap();
        let (tx, steps) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Script { child, steps }
    }

    /// Waits (with the deadline) for the next step named `step`; panics on a failure report.
    pub fn next(&self, step: &str) -> Value {
        loop {
            let v = self
                .steps
                .recv_timeout(WAIT * 3)
                .unwrap_or_else(|_| panic!("the node script never reported {step}"));
            if v["step"] == step {
                return v;
            }
            assert!(
                v["step"] != "failed" && v["step"] != "gave_up",
                "the node script failed: {v}"
            );
        }
    }

    /// Writes one line to the script's standard input.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to the node script");
    }

    /// Waits for the process to exit; true on success.
    pub fn success(mut self) -> bool {
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child process did: its status (`None`: killed at the deadline) and its output.
pub struct Outcome {
    /// Exit status; `None` when it was killed at the deadline.
    pub status: Option<std::process::ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Reads a child's pipe to the end in the background.
fn drain_pipe(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out).await;
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Runs `cmd` in its own process group; at `deadline` kills the whole group (node's test runner
/// runs each file in a child process of its own, and a browser has processes of its own too).
pub async fn run_with_deadline(
    mut cmd: tokio::process::Command,
    deadline: std::time::Duration,
) -> Outcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} (is it installed and on PATH?)"));
    let pid = child.id().expect("child pid");
    let stdout = drain_pipe(child.stdout.take());
    let stderr = drain_pipe(child.stderr.take());
    let status = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(status) => Some(status.expect("wait for child")),
        Err(_) => {
            // The group id is the child's pid: this kills exactly what this test started.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .status();
            let _ = child.wait().await;
            None
        }
    };
    Outcome {
        status,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
    }
}
