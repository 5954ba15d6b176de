//! Runs a Node script from `tests/node` (the official `socket.io-client`) that reports its
//! progress as one JSON object per line on stdout.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};

use serde_json::Value;

use super::WAIT;

/// A running script: its process and its reported steps.
pub struct Script {
    /// The node process.
    pub child: Child,
    steps: Receiver<Value>,
}

impl Script {
    /// Starts `node <script>` in `tests/node` with `env`.
    pub fn start(script: &str, env: &[(&str, String)]) -> Script {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/socket.io-client")
                .exists(),
            "run `npm ci` in tests/node first"
        );
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
