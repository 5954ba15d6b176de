//! A private `redis-server` per test, on a free port, that a test can kill and restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private Redis server.
pub struct RedisServer {
    child: Option<Child>,
    /// TCP port it listens on (kept across restarts).
    pub port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    /// Cluster bus port, for a cluster node (by default Redis would take port + 10000, which
    /// may be taken or above 65535).
    cluster_port: Option<u16>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server; with `appendonly` it persists to an append-only file in its own dir.
    pub fn start_with(appendonly: bool) -> RedisServer {
        Self::launch(appendonly, false)
    }

    /// Starts an empty Redis Cluster node (not yet part of a cluster).
    pub fn start_cluster_node() -> RedisServer {
        Self::launch(false, true)
    }

    fn launch(appendonly: bool, cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            appendonly,
            cluster_port: cluster.then(free_port),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(match self.cluster_port {
                // A short node timeout so a failover completes within a test's patience.
                Some(bus) => vec![
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                ],
                None => Vec::new(),
            })
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", &self.log_path().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on the PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be on the PATH");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (with the same data directory).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
