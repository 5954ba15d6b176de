//! A private Prometheus per test, and `promtool`: runs the real `prometheus` binary (Debian
//! package `prometheus`) in the foreground with its config, data and log in a temp dir, on a
//! free 127.0.0.1 port, independent of any system service; killed when dropped. Queries go
//! through its HTTP API.
//!
//! Self-contained (std, `tempfile`, `reqwest`, `serde_json`, `tokio`), so a test may include it
//! on its own.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Deadline for Prometheus to answer `/-/ready`.
pub const START: Duration = Duration::from_secs(30);

/// How many times a start is retried when the free port picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Runs `promtool` with `args`: whether it succeeded, and stdout + stderr.
pub fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run promtool: {e} (apt-get install prometheus)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
}

/// A running Prometheus.
pub struct Prometheus {
    child: Option<Child>,
    /// Where its web UI and API listen.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Writes `config` (YAML or JSON) to a temp dir, starts Prometheus on it and waits until it
    /// is ready. Relative paths in the config (rule files) are relative to that dir; pass
    /// absolute ones.
    pub async fn start(config: &str) -> Prometheus {
        for attempt in 1..=PORT_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("prometheus-")
                .tempdir()
                .expect("temp dir");
            let conf = dir.path().join("prometheus.yml");
            fs::write(&conf, config).expect("write prometheus.yml");
            let addr = free_addr();
            let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg("--log.level=info")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("run prometheus: {e} (apt-get install prometheus)"));
            let mut p = Prometheus {
                child: Some(child),
                addr,
                dir,
            };
            match p.wait_ready().await {
                Ok(()) => return p,
                Err(e) => {
                    let log = p.log();
                    if attempt < PORT_ATTEMPTS && log.contains("address already in use") {
                        continue;
                    }
                    panic!("prometheus did not become ready: {e}\n{log}");
                }
            }
        }
        unreachable!()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("exited during start-up: {status}"));
            }
            let last = match reqwest::get(format!("{}/-/ready", self.url())).await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!("not ready within {START:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its working directory (config, data, log).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query` parameters: the `data` member of a `success` answer,
    /// or the error Prometheus gave.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url()))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!(
                "{status}: {} {}",
                body["errorType"].as_str().unwrap_or_default(),
                body["error"].as_str().unwrap_or_default()
            ))
        }
    }

    /// An instant query: the `result` array.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// An instant query whose answer is one sample (e.g. a `sum(...)`): its value, or `None`
    /// when the result is empty.
    pub async fn scalar(&self, promql: &str) -> Result<Option<f64>, String> {
        let result = self.query(promql).await?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("not a sample: {one}")),
            many => Err(format!("{} series, expected one: {many:?}", many.len())),
        }
    }

    /// Active scrape targets (`/api/v1/targets`).
    pub async fn active_targets(&self) -> Result<Vec<Value>, String> {
        let data = self.api("targets", &[("state", "active")]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every loaded rule (`/api/v1/rules`), flattened over its groups.
    pub async fn rules(&self) -> Result<Vec<Value>, String> {
        let data = self.api("rules", &[]).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// Polls `check` until it returns `Ok`, up to `deadline`; panics with the last error and
    /// Prometheus' log if it never does.
    pub async fn eventually<T, F, Fut>(&self, what: &str, deadline: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let until = Instant::now() + deadline;
        loop {
            let last = match check().await {
                Ok(v) => return v,
                Err(e) => e,
            };
            assert!(
                Instant::now() < until,
                "{what}: not within {deadline:?}; last: {last}\n---- prometheus log ----\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- prometheus {} log ----\n{}", self.addr, self.log());
        }
    }
}
