//! Load balancers in front of test gateways: renders the templates in `deploy/nginx/` and
//! `deploy/haproxy/`, checks them with the real binaries (`nginx -t`, `haproxy -c`), and runs
//! nginx or HAProxy in the foreground in a temp dir, killed (with its workers) when dropped.
//!
//! Self-contained (std and `tempfile` only), so a test may include it on its own.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for a balancer to start answering HTTP.
pub const START: Duration = Duration::from_secs(15);

/// Passive-health parameters of every rendered nginx `server` line.
pub const NGINX_SERVER_PARAMS: &str = "max_fails=3 fail_timeout=10s";

/// How many times a start is retried when the free port picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Reads a template from `deploy/` of this crate.
pub fn template(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Replaces every `{{NAME}}` of `vars`; panics if a placeholder is left over.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        let placeholder = format!("{{{{{name}}}}}");
        assert!(
            out.contains(&placeholder),
            "the template has no {placeholder}"
        );
        out = out.replace(&placeholder, value);
    }
    if let Some(at) = out.find("{{") {
        let line = out[at..].lines().next().unwrap_or_default();
        panic!("placeholder left unrendered: {line}");
    }
    out
}

/// The nginx `UPSTREAMS` lines for `upstreams` (indented for the `upstream` block).
pub fn nginx_upstreams(upstreams: &[SocketAddr]) -> String {
    upstreams
        .iter()
        .map(|a| format!("server {a} {NGINX_SERVER_PARAMS};"))
        .collect::<Vec<_>>()
        .join("\n        ")
}

/// The cookie value HAProxy gives the `i`-th gateway (0-based): `gw1`, `gw2`, ...
pub fn haproxy_cookie(i: usize) -> String {
    format!("gw{}", i + 1)
}

/// The HAProxy `SERVERS` lines for `upstreams` (indented for the `backend` section).
pub fn haproxy_servers(upstreams: &[SocketAddr]) -> String {
    upstreams
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = haproxy_cookie(i);
            format!("server {name} {a} check cookie {name}")
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

fn prefix(dir: &Path) -> String {
    let p = dir.to_str().expect("temp dir path is UTF-8");
    assert!(
        !p.chars().any(|c| c.is_whitespace() || c == ';' || c == '#'),
        "temp dir path unusable in a config: {p}"
    );
    p.to_string()
}

/// Renders `deploy/nginx/nginx.conf.template` into `dir/nginx.conf`; returns its path.
pub fn render_nginx(listen: SocketAddr, upstreams: &[SocketAddr], dir: &Path) -> PathBuf {
    assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
    let text = render(
        &template("nginx/nginx.conf.template"),
        &[
            ("PREFIX", &prefix(dir)),
            ("LISTEN", &listen.to_string()),
            ("UPSTREAMS", &nginx_upstreams(upstreams)),
        ],
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, text).expect("write nginx.conf");
    path
}

/// Renders `deploy/haproxy/haproxy.cfg.template` into `dir/haproxy.cfg`; returns its path.
pub fn render_haproxy(listen: SocketAddr, upstreams: &[SocketAddr], dir: &Path) -> PathBuf {
    assert!(!upstreams.is_empty(), "HAProxy needs at least one server");
    let text = render(
        &template("haproxy/haproxy.cfg.template"),
        &[
            ("PREFIX", &prefix(dir)),
            ("LISTEN", &listen.to_string()),
            ("SERVERS", &haproxy_servers(upstreams)),
        ],
    );
    let path = dir.join("haproxy.cfg");
    fs::write(&path, text).expect("write haproxy.cfg");
    path
}

/// Runs `command`; panics with its output unless it succeeds. Returns stdout + stderr.
fn checked(mut command: Command, what: &str) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e} (is it installed?)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn nginx_command(conf: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new("nginx");
    // -e: error log before the configuration is read (instead of the compiled-in
    // /var/log/nginx/error.log, which an unprivileged user cannot open).
    cmd.arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"));
    cmd
}

/// `nginx -t` on `conf` with prefix `dir`; panics with nginx's output on failure.
pub fn check_nginx(conf: &Path, dir: &Path) -> String {
    let mut cmd = nginx_command(conf, dir);
    cmd.arg("-t");
    checked(cmd, "nginx -t")
}

/// `haproxy -c` on `cfg`; panics with HAProxy's output on failure.
pub fn check_haproxy(cfg: &Path) -> String {
    let mut cmd = Command::new("haproxy");
    cmd.arg("-c").arg("-f").arg(cfg);
    checked(cmd, "haproxy -c")
}

/// A free port on 127.0.0.1 (bound, read, released; someone else may take it meanwhile).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
}

/// A temp dir that nginx workers (which drop to `nobody` when started as root) can enter.
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lb-")
        .tempdir()
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// One `GET path` over HTTP/1.0; the status code, or why there is none.
pub fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]).to_string();
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
}

/// A balancer process in its own process group (so its workers die with it).
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path) -> Proc {
        let out = fs::File::create(dir.join("stdout.log")).expect("stdout.log");
        let err = fs::File::create(dir.join("stderr.log")).expect("stderr.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn balancer");
        Proc { child }
    }

    /// Waits until `addr` answers HTTP (any status: the gateways behind may be down).
    fn wait_serving(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("exited during start-up: {status}"));
            }
            let last = match http_status(addr, "/healthz") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!("no HTTP answer on {addr} within {START:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM to the leader (nginx's master then stops and reaps its workers; HAProxy stops
    /// at once) and reaps it; if it is still there after a deadline, SIGKILL to its whole
    /// process group (workers included).
    fn stop(&mut self) {
        let pid = self.child.id();
        signal("TERM", &pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not reaped yet, so the group id is still ours.
        signal("KILL", &format!("-{pid}"));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -s <sig> -- <target>` (a pid, or `-pgid` for a process group); errors ignored.
fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Contents of `dir/name` under a heading (empty string if the file does not exist).
fn section(dir: &Path, name: &str) -> String {
    match fs::read_to_string(dir.join(name)) {
        Ok(text) if !text.is_empty() => format!("---- {name} ----\n{text}"),
        _ => String::new(),
    }
}

fn address_in_use(log: &str) -> bool {
    log.contains("Address already in use")
}

/// nginx running `deploy/nginx/nginx.conf.template` in front of some gateways.
pub struct Nginx {
    child: Proc,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Renders the template for `upstreams`, checks it with `nginx -t`, starts nginx in the
    /// foreground and waits until it answers HTTP.
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        for attempt in 1..=PORT_ATTEMPTS {
            let dir = work_dir();
            let addr = free_addr();
            let conf = render_nginx(addr, upstreams, dir.path());
            check_nginx(&conf, dir.path());
            let mut child = Proc::spawn(nginx_command(&conf, dir.path()), dir.path());
            let started = child.wait_serving(addr);
            let nginx = Nginx { child, addr, dir };
            match started {
                Ok(()) => return nginx,
                Err(e) => {
                    let log = nginx.log();
                    if attempt < PORT_ATTEMPTS && address_in_use(&log) {
                        continue;
                    }
                    panic!("nginx did not start: {e}\n{log}");
                }
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The rendered configuration.
    pub fn config(&self) -> String {
        fs::read_to_string(self.dir.path().join("nginx.conf")).unwrap_or_default()
    }

    /// The access log so far (one line per request, with `upstream=<gateway>`).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    /// Where nginx writes its access log (for a test process of its own to read).
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Error log, output and access log, for failure messages.
    pub fn log(&self) -> String {
        ["stderr.log", "stdout.log", "error.log", "access.log"]
            .iter()
            .map(|f| section(self.dir.path(), f))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.child.stop();
        if std::thread::panicking() {
            eprintln!("==== nginx {} ====\n{}", self.addr, self.log());
        }
    }
}

/// HAProxy running `deploy/haproxy/haproxy.cfg.template` in front of some gateways.
pub struct Haproxy {
    child: Proc,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Renders the template for `upstreams` (cookies `gw1`, `gw2`, ... in that order), checks
    /// it with `haproxy -c`, starts HAProxy in the foreground (`-db`) and waits until it
    /// answers HTTP.
    pub fn start(upstreams: &[SocketAddr]) -> Haproxy {
        for attempt in 1..=PORT_ATTEMPTS {
            let dir = work_dir();
            let addr = free_addr();
            let cfg = render_haproxy(addr, upstreams, dir.path());
            check_haproxy(&cfg);
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            let mut child = Proc::spawn(cmd, dir.path());
            let started = child.wait_serving(addr);
            let haproxy = Haproxy { child, addr, dir };
            match started {
                Ok(()) => return haproxy,
                Err(e) => {
                    let log = haproxy.log();
                    if attempt < PORT_ATTEMPTS && address_in_use(&log) {
                        continue;
                    }
                    panic!("HAProxy did not start: {e}\n{log}");
                }
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The rendered configuration.
    pub fn config(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.cfg")).unwrap_or_default()
    }

    /// Where HAProxy writes one line per request (`option httplog`: `gateways/gwN` and the
    /// request line), for a test process of its own to read.
    pub fn request_log_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Its output so far: alerts and warnings, then one log line per request.
    pub fn log(&self) -> String {
        ["stderr.log", "stdout.log"]
            .iter()
            .map(|f| section(self.dir.path(), f))
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.child.stop();
        if std::thread::panicking() {
            eprintln!("==== HAProxy {} ====\n{}", self.addr, self.log());
        }
    }
}
