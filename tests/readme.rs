//! The README works as written: its first-screen run command, from a fresh clone of the
//! repository, starts a gateway that answers `/readyz`; the quick start's `token` and `publish`
//! commands, and the ones the `--dev` banner prints, work against it.
//!
//! The commands are read out of README.md, so the test follows the README. The clone builds into
//! this build's target directory (`CARGO_TARGET_DIR`), so only this crate is compiled again.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::Client;
use common::WAIT;
use serde_json::json;

/// Compiling this crate in the clone on a loaded two-core machine takes minutes.
const BUILD: Duration = Duration::from_secs(900);

/// The README's commands this test runs.
struct Readme {
    /// First indented command of the first screen (`cargo run -- --dev`).
    run: String,
    /// The quick start's token command, without `TOKEN=$(...)`.
    token: String,
    /// The quick start's CLI publish command, continuation lines joined.
    publish: String,
}

fn readme(text: &str) -> Readme {
    let first_screen = text.split("\n---").next().unwrap_or("");
    let run = first_screen
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .find(|l| l.starts_with("cargo run"))
        .expect("a `cargo run` command on the README's first screen")
        .trim()
        .to_string();
    let quick = text
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Quick start section");
    let joined = quick.replace("\\\n", " ");
    let token = joined
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("TOKEN=$(")
                .and_then(|c| c.strip_suffix(')'))
        })
        .expect("the quick start's TOKEN=$(... token ...) line")
        .to_string();
    let publish = joined
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo run") && l.contains(" publish "))
        .expect("the quick start's CLI publish command")
        .to_string();
    Readme {
        run,
        token,
        publish,
    }
}

/// A process group started by a shell command, killed (the whole group) when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// `bash -c command` in `dir` with a clean cargo environment and `env`.
fn shell(dir: &Path, command: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(command).current_dir(dir);
    // Variables cargo sets for this test would describe this checkout, not the clone.
    for (name, _) in std::env::vars() {
        if (name.starts_with("CARGO_") && name != "CARGO_HOME") || name.starts_with("__CARGO") {
            cmd.env_remove(name);
        }
    }
    for name in [
        "JWT_SECRET",
        "PUBLISH_API_KEYS",
        "PUBLISH_API_KEY",
        "REDIS_URL",
        "GATEWAY_URL",
    ] {
        cmd.env_remove(name);
    }
    cmd.env("CARGO_TARGET_DIR", target_dir())
        .envs(env.iter().copied());
    cmd
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Clones this repository into `into`, at the working tree's tracked content (a commit
/// `git stash create` makes without touching the checkout; HEAD when nothing is modified).
fn fresh_clone(into: &Path) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let snapshot = git(here, &["stash", "create"]);
    let commit = if snapshot.is_empty() {
        git(here, &["rev-parse", "HEAD"])
    } else {
        snapshot
    };
    let repo = into.join("realtime-gateway");
    let repo_str = repo.to_str().expect("utf-8 path");
    git(here, &["clone", "--quiet", "--no-checkout", ".", repo_str]);
    git(&repo, &["checkout", "--quiet", "--detach", &commit]);
    repo
}

fn success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Everything the gateway printed, for failure messages.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// What the `--dev` gateway printed that the test needs.
#[derive(Default)]
struct Started {
    public: Option<String>,
    secret: Option<String>,
    key: Option<String>,
    banner_token: Option<String>,
    banner_publish: Option<String>,
}

/// Reads the gateway's stderr until it has listened and printed its banner.
fn started(lines: &mpsc::Receiver<String>, log: &Log, gateway: &mut Group) -> Started {
    let deadline = Instant::now() + BUILD;
    let mut s = Started::default();
    let mut continued: Option<String> = None;
    while s.public.is_none() || s.banner_publish.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "the README's run command did not start a gateway in {BUILD:?}:\n{}",
                    log.text()
                );
                if let Some(status) = gateway.0.try_wait().expect("try_wait") {
                    panic!(
                        "the README's run command exited ({status}):\n{}",
                        log.text()
                    );
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the README's run command ended its output:\n{}", log.text())
            }
        };
        let word = |prefix: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix).map(String::from))
        };
        if let Some(mut partial) = continued.take() {
            partial.push(' ');
            partial.push_str(line.trim());
            match partial.strip_suffix('\\') {
                Some(more) => continued = Some(more.trim_end().to_string()),
                None => s.banner_publish = Some(partial),
            }
            continue;
        }
        if line.contains("listening") {
            s.public = word("public=");
        } else if line.contains("generated JWT_SECRET=") {
            s.secret = word("JWT_SECRET=");
        } else if line.contains("generated PUBLISH_API_KEYS=") {
            s.key = word("PUBLISH_API_KEYS=");
        } else if let Some(cmd) = line.trim().strip_prefix("mint a token:") {
            s.banner_token = Some(cmd.trim().to_string());
        } else if let Some(cmd) = line.trim().strip_prefix("publish:") {
            match cmd.trim().strip_suffix('\\') {
                Some(more) => continued = Some(more.trim_end().to_string()),
                None => s.banner_publish = Some(cmd.trim().to_string()),
            }
        }
    }
    s
}

async fn wait_ready(url: &str, log: &Log) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = reqwest::get(format!("{url}/readyz"))
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().ok() == Some(&200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered 200 (last: {status:?}):\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn authenticated(url: &str, token: &str, log: &Log) -> Client {
    let connect = Client::connect(url, Some(json!({ "token": token })));
    let mut client = tokio::time::timeout(WAIT, connect)
        .await
        .unwrap_or_else(|_| panic!("no Socket.IO connect answer:\n{}", log.text()))
        .unwrap_or_else(|e| panic!("a token minted as the README says is refused: {e}"));
    let me = client.wait_for("authenticated", WAIT).await;
    let me = me.unwrap_or_else(|| panic!("no authenticated event:\n{}", log.text()));
    assert_eq!(me["userId"].to_string().trim_matches('"'), "10", "{me}");
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_commands_work_from_a_fresh_clone() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let cmds = readme(&text);
    assert_eq!(
        cmds.run, "cargo run -- --dev",
        "the first screen's run command"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let repo = fresh_clone(dir.path());

    // Free ports instead of the defaults, so the test can run beside anything.
    let mut cmd = shell(
        &repo,
        &cmds.run,
        &[
            ("GATEWAY_LISTEN", "127.0.0.1:0"),
            ("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    );
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gateway = Group(cmd.spawn().expect("run the README's command"));
    let stderr = gateway.0.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    let log = Log::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.push(&line);
            let _ = tx.send(line);
        }
    });
    let s = started(&lines, &log, &mut gateway);
    let public = s.public.expect("listening address");
    eprintln!("the README's gateway listens on {public}");
    let url = format!("http://{public}");
    wait_ready(&url, &log).await;
    let secret = s.secret.expect("the --dev JWT secret");
    let key = s.key.expect("the --dev publish key");

    // The quick start's commands, with the secrets `--dev` generated and this gateway's address.
    let token = success(
        &cmds.token,
        &shell(&repo, &cmds.token, &[("JWT_SECRET", &secret)])
            .output()
            .expect("run the token command"),
    );
    eprintln!("the quick start's token command printed a token");
    let mut client = authenticated(&url, &token, &log).await;
    let ack = client
        .request("join", &json!("batch:456"), WAIT)
        .await
        .expect("join ack");
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let publish = cmds.publish.replace("http://127.0.0.1:3000", &url);
    let answer = success(
        &publish,
        &shell(&repo, &publish, &[("PUBLISH_API_KEYS", &key)])
            .output()
            .expect("run the publish command"),
    );
    assert!(answer.contains("\"offset\":1"), "{answer}");
    let event = client
        .wait_for("script_submission", WAIT)
        .await
        .expect("the published event reaches the client");
    assert_eq!(event["room"], json!("batch:456"), "{event}");

    // The commands the banner printed, as printed.
    let banner_token = s.banner_token.expect("the banner's token command");
    let token = success(
        &banner_token,
        &shell(&repo, &banner_token, &[])
            .output()
            .expect("run the banner's token command"),
    );
    let mut client = authenticated(&url, &token, &log).await;
    let banner_publish = s.banner_publish.expect("the banner's publish command");
    success(
        &banner_publish,
        &shell(&repo, &banner_publish, &[])
            .output()
            .expect("run the banner's publish command"),
    );
    let event = client
        .wait_for("notification", WAIT)
        .await
        .expect("the banner's event reaches user 10");
    assert_eq!(event["room"], json!("user:10"), "{event}");
}
