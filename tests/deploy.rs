//! Deployment and observability artefacts, checked by the tools that consume them and against
//! the real gateway binary:
//!
//! - alert rules: `promtool check rules` / `promtool test rules`, runbook sections, and the
//!   Kubernetes PrometheusRule copy;
//! - metrics: every metric the dashboard and the alerts use is on a real gateway's `/metrics`
//!   once traffic has touched it, with label values from small fixed sets only;
//! - a real Prometheus scraping three gateways counts every client connection, loads the alert
//!   rules, and evaluates every dashboard query;
//! - docker-compose.yml and deploy/k8s: parsed with PyYAML, every gateway setting is one the
//!   binary accepts, `--check-config` passes with exactly that environment, a gateway boots with
//!   it; ports, probe paths, drain timing and wiring between the pieces agree;
//! - the compose stack's nginx and HAProxy configs, rendered by the compose entrypoints, pass
//!   `nginx -t` / `haproxy -c`; the compose demo traffic script drives real gateways through
//!   that nginx;
//! - deploy/Dockerfile: structure, and its HEALTHCHECK command run against a live gateway.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`), `python3` with PyYAML
//! (`python3-yaml`), `redis-server`, `nginx`, `haproxy`, `node` and `bash`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{Client, ClientError};
use common::prometheus::{promtool, Prometheus};
use common::redis_server::RedisServer;
use common::{batch_created, metric, sign, token, Gateway, KEY, SECRET, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Helpers: files, YAML, the binary
// ---------------------------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of a file, parsed by PyYAML (`yaml.safe_load_all`), as JSON.
fn yaml_docs(relative: &str) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
                          with open(sys.argv[1]) as f:\n    \
                          print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))";
    let path = repo().join(relative);
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run python3: {e}"));
    assert!(
        out.status.success(),
        "PyYAML could not parse {} (PyYAML missing? apt-get install python3-yaml):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

/// The only YAML document of a file.
fn yaml(relative: &str) -> Value {
    let mut docs = yaml_docs(relative);
    assert_eq!(docs.len(), 1, "{relative}: expected one YAML document");
    docs.remove(0)
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

/// Every environment variable the binary reads, from `realtime-gateway --help`: each setting
/// shows `[env: NAME=]` (or `[env: NAME]` for the secrets, whose values clap hides).
fn accepted_env() -> BTreeSet<String> {
    let out = Command::new(common::binary())
        .arg("--help")
        .output()
        .expect("run realtime-gateway --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    for must in [
        "REDIS_URL",
        "JWT_SECRET",
        "PUBLISH_API_KEYS",
        "GATEWAY_DRAIN_DELAY",
    ] {
        assert!(names.contains(must), "{must} not in --help:\n{help}");
    }
    names
}

/// Runs `realtime-gateway --check-config` with exactly `env` (nothing inherited).
fn check_config(env: &BTreeMap<String, String>) -> Result<(), String> {
    let out = Command::new(common::binary())
        .arg("--check-config")
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .expect("run realtime-gateway --check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.trim() == "configuration ok" {
        Ok(())
    } else {
        Err(format!("{}: {stdout}{stderr}", out.status))
    }
}

/// Checks names against the binary, runs `--check-config`, then boots a gateway with `env`
/// (listen addresses replaced by free local ones) and waits for /readyz 200 and Redis up.
async fn the_binary_accepts(what: &str, env: &BTreeMap<String, String>) {
    let accepted = accepted_env();
    let unknown: Vec<&String> = env.keys().filter(|k| !accepted.contains(*k)).collect();
    assert!(
        unknown.is_empty(),
        "{what} sets variables the gateway does not read: {unknown:?}\naccepted: {accepted:?}"
    );
    if let Err(e) = check_config(env) {
        panic!("{what}: realtime-gateway --check-config refused this environment: {e}\n{env:#?}");
    }
    // The harness binds free local ports with --listen / --admin-listen (flags win over the
    // environment); everything else exactly as given.
    let boot: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Gateway::start(&boot);
    gw.wait_readyz(200).await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "gateway_redis_up", ""), 1.0, "{m}");
}

/// `250ms`, `5s`, `2m`, `1h` in seconds.
fn secs(d: &str) -> f64 {
    let d = d.trim();
    let split = d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len());
    let (n, unit) = d.split_at(split);
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("not a duration: {d}"));
    match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => panic!("not a duration: {d}"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// A process in its own process group, killed with its children when dropped.
struct Spawned {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Spawned {
    fn start(mut cmd: Command, what: &'static str, log: PathBuf) -> Spawned {
        let file = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Spawned { child, what, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM to the group, SIGKILL after a deadline.
    fn stop(&mut self) {
        let group = format!("-{}", self.child.id());
        if !self.running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &group])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.what, self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: PromQL and the exposition format
// ---------------------------------------------------------------------------------------------

/// Identifiers in a PromQL expression, outside string literals, with the byte offset after each.
fn identifiers(expr: &str) -> Vec<(String, usize)> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b':'))
            {
                i += 1;
            }
            let preceded_by_digit = start > 0 && bytes[start - 1].is_ascii_digit();
            if !preceded_by_digit {
                out.push((expr[start..i].to_string(), i));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Metric names (gateway_*, process_*) an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| id.starts_with("gateway_") || id.starts_with("process_"))
        .collect()
}

/// Label matchers written after metric names: (metric, label, operator, value).
fn matchers(expr: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for (name, end) in identifiers(expr) {
        if !(name.starts_with("gateway_") || name.starts_with("process_")) {
            continue;
        }
        let rest = expr[end..].trim_start();
        let Some(body) = rest.strip_prefix('{') else {
            continue;
        };
        let close = body.find('}').expect("unclosed label matcher");
        for m in body[..close]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            let op_at = m.find(['=', '!']).expect("a matcher operator");
            let label = m[..op_at].trim().to_string();
            let after = &m[op_at..];
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|op| after.starts_with(op))
                .expect("a matcher operator");
            let value = after[op.len()..].trim().trim_matches('"').to_string();
            out.push((name.clone(), label, op.to_string(), value));
        }
    }
    out
}

/// Metric names passed straight to rate() / irate() / increase().
fn rated(expr: &str) -> Vec<String> {
    let ids = identifiers(expr);
    ids.windows(2)
        .filter(|w| {
            matches!(w[0].0.as_str(), "rate" | "irate" | "increase")
                && expr[w[0].1..].trim_start().starts_with('(')
        })
        .map(|w| w[1].0.clone())
        .filter(|n| n.starts_with("gateway_") || n.starts_with("process_"))
        .collect()
}

/// One `/metrics` page.
struct Scrape {
    /// Sample name -> label sets seen.
    samples: BTreeMap<String, Vec<Vec<(String, String)>>>,
    /// Family -> `# TYPE`.
    types: HashMap<String, String>,
    /// Families with a `# HELP` line.
    helps: BTreeSet<String>,
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() {
            return out;
        }
        assert_eq!(
            chars.next(),
            Some('='),
            "label {name} without value in {text}"
        );
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {name} value not quoted in {text}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap_or('\\')),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim().to_string(), value));
    }
}

fn parse_exposition(text: &str) -> Scrape {
    let mut scrape = Scrape {
        samples: BTreeMap::new(),
        types: HashMap::new(),
        helps: BTreeSet::new(),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            scrape.helps.insert(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("bad TYPE line: {line}");
            };
            scrape.types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') {
            let (name, labels) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').expect("closing brace");
                    (&line[..open], parse_labels(&line[open + 1..close]))
                }
                None => (
                    line.split_whitespace().next().unwrap_or_default(),
                    Vec::new(),
                ),
            };
            scrape
                .samples
                .entry(name.to_string())
                .or_default()
                .push(labels);
        }
    }
    scrape
}

impl Scrape {
    /// The family a sample name belongs to (`x_bucket` of histogram `x` is `x`).
    fn family(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return base.to_string();
                }
            }
        }
        sample.to_string()
    }
}

const CHANNELS: &[&str] = &[
    "script_submission",
    "batch_update",
    "exam_timetable",
    "incident",
    "notification",
    "other",
];
const TRANSPORTS: &[&str] = &["websocket", "polling"];
const DISCONNECT_REASONS: &[&str] = &[
    "transport_close",
    "multiple_polling",
    "bad_packet",
    "transport_error",
    "heartbeat_timeout",
    "client_disconnect",
    "server_disconnect",
    "server_closing",
];
const AUTH_REASONS: &[&str] = &[
    "token_missing",
    "token_malformed",
    "token_algorithm_not_allowed",
    "token_invalid_signature",
    "token_expired",
    "token_not_yet_valid",
    "token_claim_missing",
    "token_claim_invalid",
    "token_wrong_issuer_or_audience",
    "token_identity_changed",
    "not_authenticated",
    "auth_timeout",
    "token_revoked",
    "session_revoked",
    "tenant_connection_limit",
];
const JOIN_REASONS: &[&str] = &[
    "invalid_request",
    "invalid_since",
    "invalid_room",
    "not_authenticated",
    "forbidden_room",
    "room_kind_not_allowed",
    "forbidden_role",
    "too_many_rooms",
];
const DELIVERY_REASONS: &[&str] = &["buffer_full", "closed", "encode"];
const CLIENT_PROTOCOL_REASONS: &[&str] = &[
    // refused WebSocket handshakes
    "unsupported_protocol_version",
    "not_a_websocket_upgrade",
    "unsupported_websocket_version",
    "missing_websocket_key",
    "request_too_large",
    "bad_request",
    "draining",
    "unsupported_parser",
    "origin_not_allowed",
    // frames
    "reserved_bits",
    "unknown_opcode",
    "unmasked_frame",
    "bad_control_frame",
    "message_too_big",
    "continuation_without_message",
    "interleaved_message",
    "binary_message",
    "invalid_utf8",
    "rsv1_not_on_first_frame",
    "invalid_deflate_data",
    // packets
    "empty",
    "unknown_engine_packet",
    "bad_ack_id",
    "bad_json",
    "event_not_array",
    "event_without_name",
    "binary_not_supported",
    "unknown_socketio_packet",
    "bad_msgpack",
    "unknown_event",
    "event_before_connect",
    "connect_timeout",
    // long-polling requests
    "unknown_transport",
    "unknown_sid",
    "bad_handshake_method",
    "payload_too_large",
    "bad_base64",
];
const BUS_INVALID_REASONS: &[&str] = &[
    "unknown_room",
    "bad_frame",
    "bad_envelope",
    "tenant_mismatch",
    "unknown_channel",
    "bad_control",
];
const PUBLISH_RESULTS: &[&str] = &[
    "ok",
    "invalid_json",
    "invalid_body",
    "missing_field",
    "invalid_field",
    "unknown_field",
    "unknown_channel",
    "unknown_event",
    "invalid_payload",
    "invalid_room",
    "tenant_mismatch",
    "too_many_rooms",
    "missing_api_key",
    "invalid_api_key",
    "publish_disabled",
    "payload_too_large",
    "body_too_large",
    "batch_too_large",
    "unsupported_media_type",
    "bus_unavailable",
    "bus_rejected",
    "scope_not_allowed",
    "tenant_not_allowed",
    "tenant_rate_limited",
];
const CONTROL_ACTIONS: &[&str] = &["list", "disconnect", "revoke", "leave"];
const CONTROL_RESULTS: &[&str] = &[
    "ok",
    "missing_api_key",
    "invalid_api_key",
    "publish_disabled",
    "scope_not_allowed",
    "tenant_not_allowed",
    "invalid_json",
    "invalid_body",
    "missing_field",
    "invalid_field",
    "invalid_room",
    "forbidden_room",
    "bus_unavailable",
];
const API_KEY_REFUSALS: &[&str] = &["missing", "invalid", "scope", "tenant"];
/// Tenants get their own label only when listed in the tenants file (none here).
const QUOTA_TENANTS: &[&str] = &["other"];
const RECOVERY_RESULTS: &[&str] = &[
    "recovered",
    "buffer_overflow",
    "epoch_changed",
    "future_offset",
    "too_old",
    "too_many",
    "invalid_since",
    "bus_unavailable",
];
const GAP_READ_RESULTS: &[&str] = &[
    "recovered",
    "epoch_changed",
    "future_offset",
    "too_old",
    "too_many",
    "error",
];

const PRESENCE_REFUSALS: &[&str] = &[
    "invalid_request",
    "invalid_room",
    "invalid_field",
    "not_authenticated",
    "room_kind_not_allowed",
    "presence_not_enabled",
    "forbidden_room",
    "presence_unavailable",
    "missing_api_key",
    "invalid_api_key",
    "publish_disabled",
    "scope_not_allowed",
    "tenant_not_allowed",
];

/// The labels each metric family may carry and the values each may take. A family missing
/// here is a new metric: describe it in the README's metric table and add it here.
fn allowed_labels(family: &str) -> Option<&'static [(&'static str, &'static [&'static str])]> {
    Some(match family {
        "gateway_connections"
        | "gateway_connections_total"
        | "gateway_slow_consumer_disconnects_total" => &[("transport", TRANSPORTS)],
        "gateway_disconnects_total" => &[("reason", DISCONNECT_REASONS)],
        "gateway_auth_failures_total" => &[("reason", AUTH_REASONS)],
        "gateway_join_refused_total" => &[("reason", JOIN_REASONS)],
        "gateway_events_received_total"
        | "gateway_events_delivered_total"
        | "gateway_events_published_total" => &[("channel", CHANNELS)],
        "gateway_delivery_failures_total" => &[("reason", DELIVERY_REASONS)],
        "gateway_client_protocol_errors_total" => &[("reason", CLIENT_PROTOCOL_REASONS)],
        "gateway_bus_invalid_total" => &[("reason", BUS_INVALID_REASONS)],
        "gateway_publish_requests_total" => &[("result", PUBLISH_RESULTS)],
        "gateway_recoveries_total" => &[("result", RECOVERY_RESULTS)],
        "gateway_gap_reads_total" => &[("result", GAP_READ_RESULTS)],
        "gateway_control_requests_total" => {
            &[("action", CONTROL_ACTIONS), ("result", CONTROL_RESULTS)]
        }
        "gateway_api_key_refusals_total" => &[("reason", API_KEY_REFUSALS)],
        "gateway_upgrades_total" => &[("result", &["upgraded", "timeout", "refused"])],
        "gateway_tenant_quota_total" => &[
            ("quota", &["connections", "publish_rate"]),
            ("outcome", &["allowed", "refused"]),
            ("tenant", QUOTA_TENANTS),
        ],
        "gateway_delivery_lag_seconds"
        | "gateway_redis_publish_duration_seconds"
        | "gateway_redis_pool_wait_duration_seconds" => &[],
        "gateway_rooms"
        | "gateway_events_replayed_total"
        | "gateway_bus_up"
        | "gateway_ready"
        | "gateway_redis_up"
        | "gateway_redis_reconnects_total"
        | "gateway_redis_subscriptions"
        | "gateway_bus_duplicates_total"
        | "gateway_resyncs_total"
        | "gateway_drained_connections_total"
        | "gateway_connections_refused_total"
        | "gateway_accept_errors_total" => &[],
        "gateway_presence_members"
        | "gateway_presence_rooms"
        | "gateway_presence_reaped_members_total"
        | "gateway_presence_lease_expiries_total"
        | "gateway_lifecycle_entries_total"
        | "gateway_presence_read_duration_seconds" => &[],
        "gateway_presence_writes_total" | "gateway_presence_lease_renewals_total" => {
            &[("result", &["ok", "lapsed", "error"])]
        }
        "gateway_presence_refused_total" => &[("reason", PRESENCE_REFUSALS)],
        "gateway_lifecycle_dropped_total" => &[("reason", &["queue_full", "bus_unavailable"])],
        f if f.starts_with("process_") => &[],
        _ => return None,
    })
}

/// Every PromQL expression of the dashboard (panel targets and variable queries).
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/realtime-gateway.json"))
        .expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(e)) = map.get("expr") {
                    out.push(e.clone());
                }
                for v in map.values() {
                    walk(v, out);
                }
            }
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], &mut exprs);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() > 20, "dashboard has too few queries: {exprs:?}");
    exprs
}

/// The alert rules of alerts.yml: (name, rule).
fn alert_rules() -> Vec<(String, Value)> {
    yaml("deploy/prometheus/alerts.yml")["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| (s(&r["alert"]).to_string(), r))
        .collect()
}

/// A dashboard expression as Prometheus sees it once Grafana filled in its variables.
fn grafana_to_promql(expr: &str, rate_interval: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$instance", ".*");
    // Grafana's label_values(metric, label) variable function.
    match expr.strip_prefix("label_values(") {
        Some(args) => {
            let args = args.trim_end_matches(')');
            let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
            format!("group by ({}) ({})", label.trim(), metric.trim())
        }
        None => expr,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Alert rules: promtool, runbook, PrometheusRule copy
// ---------------------------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_and_each_links_its_runbook_section() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
        &["check", "config", "prometheus.yml"][..],
    ] {
        let (ok, out) = promtool(args, &dir);
        assert!(ok, "promtool {} failed:\n{out}", args.join(" "));
    }

    let rules = alert_rules();
    let runbook = read("deploy/RUNBOOK.md");
    let tests = yaml("deploy/prometheus/alerts_test.yml");
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for t in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = s(&t["alertname"]).to_string();
            match t["exp_alerts"].as_array() {
                Some(a) if !a.is_empty() => fired.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    let mut names = BTreeSet::new();
    for (name, rule) in &rules {
        assert!(names.insert(name.clone()), "alert {name} defined twice");
        let severity = s(&rule["labels"]["severity"]);
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|t| t.len() > 10),
                "{name}: no {key}"
            );
        }
        let url = s(&rule["annotations"]["runbook_url"]);
        let anchor = name.to_lowercase();
        assert_eq!(
            url,
            format!("deploy/RUNBOOK.md#{anchor}"),
            "{name}: runbook_url"
        );
        // GitHub's anchor of `## GatewayRedisUnreachable` is #gatewayredisunreachable.
        let heading = format!("\n## {name}\n");
        let at = runbook
            .find(&heading)
            .unwrap_or_else(|| panic!("RUNBOOK.md has no section `## {name}`"));
        let section = &runbook[at + heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for part in ["**Meaning.**", "**Confirm.**", "**Act.**"] {
            assert!(
                section.contains(part),
                "RUNBOOK.md section {name} lacks {part}"
            );
        }
        assert!(fired.contains(name), "alerts_test.yml never fires {name}");
        assert!(
            silent.contains(name),
            "alerts_test.yml never checks that {name} stays quiet"
        );
    }
    for required in [
        "GatewayRedisUnreachable",
        "GatewayNotReady",
        "GatewayDeliveryLagHigh",
        "GatewayDeliveryFailures",
        "GatewayAuthFailuresSpike",
        "GatewayPublishErrors",
        "GatewayEventsNotDelivered",
        "GatewayRecoveryFailures",
    ] {
        assert!(names.contains(required), "no alert {required}");
    }

    // The Prometheus Operator copy holds the same groups, rule for rule.
    let alerts = yaml("deploy/prometheus/alerts.yml");
    let operator = yaml("deploy/k8s/prometheusrule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert!(
        operator["spec"]["groups"] == alerts["groups"],
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: copy the \
         groups of alerts.yml under spec:"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Every metric the dashboard and the alerts use exists, with bounded labels
// ---------------------------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next text frame, within the deadline.
async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("stalled client: unexpected {other:?}"),
    }
}

/// Connects a WebSocket client that authenticates, joins `room` and then stops reading, with a
/// tiny receive buffer: the gateway's queue for it fills up.
async fn stalled_client(gw: &Gateway, room: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(gw.public).await.expect("connect");
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.public);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake");
    assert!(next_text(&mut ws).await.starts_with('0'), "no open packet");
    let auth = json!({ "token": token("66", "1", "STUDENT", 3600) });
    ws.send(Message::text(format!("40{auth}"))).await.unwrap();
    loop {
        let t = next_text(&mut ws).await;
        if t == "2" {
            ws.send(Message::text("3")).await.unwrap();
        }
        if t.starts_with("42[\"authenticated\"") {
            break;
        }
    }
    ws.send(Message::text(format!("421{}", json!(["join", room]))))
        .await
        .unwrap();
    loop {
        let t = next_text(&mut ws).await;
        if let Some(ack) = t.strip_prefix("431") {
            assert!(ack.contains("\"ok\":true"), "stalled client join: {ack}");
            break;
        }
    }
    ws
}

/// Every metric the dashboard and the alert rules read, with who reads it.
fn dashboard_and_alert_metrics() -> BTreeMap<String, Vec<String>> {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for expr in dashboard_exprs() {
        for name in metric_names(&expr) {
            wanted
                .entry(name)
                .or_default()
                .push(format!("dashboard: {expr}"));
        }
    }
    for (alert, rule) in alert_rules() {
        for name in metric_names(s(&rule["expr"])) {
            wanted
                .entry(name)
                .or_default()
                .push(format!("alert {alert}"));
        }
    }
    wanted
}

/// A gateway that has seen no traffic at all already exports every series the dashboard and
/// the alerts read (at 0), described and typed: no "No data" panel, no alert without a series.
#[tokio::test]
async fn a_gateway_without_traffic_exports_every_dashboard_and_alert_metric() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&[("REDIS_URL", &redis.url())]);
    gw.wait_readyz(200).await;
    let text = gw.metrics().await;
    let scrape = parse_exposition(&text);
    let wanted = dashboard_and_alert_metrics();
    assert!(wanted.len() > 20, "too few metrics found: {wanted:?}");
    let missing: Vec<(&String, &Vec<String>)> = wanted
        .iter()
        .filter(|(n, _)| !scrape.samples.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "not on the first scrape of a gateway without traffic: {missing:#?}\n{text}"
    );
    for name in wanted.keys() {
        let family = scrape.family(name);
        assert!(scrape.helps.contains(&family), "{name} has no # HELP line");
        assert!(
            scrape.types.contains_key(&family),
            "{name} has no # TYPE line"
        );
    }
    // Known label values start at 0: a publish error never seen yet has its series.
    let at_zero = |name: &str, label: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(label) && l.ends_with(" 0"))
    };
    assert!(
        at_zero(
            "gateway_publish_requests_total",
            "result=\"bus_unavailable\""
        ),
        "{text}"
    );
    assert!(
        at_zero("gateway_connections", "transport=\"polling\""),
        "{text}"
    );
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_is_exported_with_bounded_labels() {
    let mut redis = RedisServer::start();
    let gw = Gateway::start(&[
        ("REDIS_URL", &redis.url()),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
        // A small socket queue, so a stalled client becomes a slow consumer quickly.
        ("GATEWAY_MAX_REPLAY", "228"),
        ("GATEWAY_SOCKET_BUFFER", "164"),
    ]);
    gw.wait_readyz(200).await;

    // The first event creates the room's epoch; a client joins and learns the position.
    let (status, _) = gw.publish(&batch_created(1, &["batch:456"], 1)).await;
    assert_eq!(status, 200);
    let mut a = gw.client("10", "1", "ADMIN").await;
    let ack = a
        .request("join", &json!({ "room": "batch:456" }), WAIT)
        .await
        .expect("join");
    assert_eq!(ack["ok"], true, "{ack}");
    let epoch = s(&ack["epoch"]).to_string();
    let before = ack["offset"].as_u64().expect("offset");

    // Presence of the room (batch rooms have it by default), and a refused presence request.
    let presence = a
        .request("presence", &json!("batch:456"), WAIT)
        .await
        .expect("presence");
    assert_eq!(presence["ok"], true, "{presence}");
    let refused = a
        .request("presence", &json!("batch:457"), WAIT)
        .await
        .expect("presence");
    assert_eq!(refused["error"]["code"], "forbidden_room", "{refused}");

    // A refused join, a refused token.
    let refused = a
        .request("join", &json!({ "room": "user:99" }), WAIT)
        .await
        .expect("join");
    assert_eq!(refused["error"]["code"], "forbidden_room", "{refused}");
    let forged = sign(
        &json!({ "sub": "12", "institutionId": "1", "role": "ADMIN", "exp": common::now() + 600 }),
        "not-the-gateway-secret-0123456789abcdef",
    );
    match Client::connect(&gw.url(), Some(json!({ "token": forged }))).await {
        Err(ClientError::Refused(code)) => assert_eq!(code, "token_invalid_signature"),
        Err(e) => panic!("forged token: {e}"),
        Ok(_) => panic!("a forged token was accepted"),
    }

    // A published event reaches the client.
    let (status, body) = gw.publish(&batch_created(1, &["batch:456"], 2)).await;
    assert_eq!(status, 200, "{body}");
    let offset = body["rooms"][0]["offset"].as_u64().expect("offset");
    assert_eq!(offset, before + 1);
    let event = a.wait_for("batch_update", WAIT).await.expect("event");
    assert_eq!(event["offset"], offset);

    // Publish errors: a wrong key, an unknown channel.
    let (status, _) = gw
        .post(
            "/v1/publish",
            Some("not-a-publish-key-0123456789"),
            "application/json",
            batch_created(1, &["batch:456"], 3).to_string(),
        )
        .await;
    assert_eq!(status, 403);
    let mut unknown = batch_created(1, &["batch:456"], 3);
    unknown["channel"] = json!("gossip");
    let (status, body) = gw.publish(&unknown).await;
    assert_eq!(
        (status, s(&body["error"]["code"])),
        (400, "unknown_channel")
    );

    // A client recovers the event it missed.
    let b = gw.client("11", "1", "STUDENT").await;
    let ack = b
        .request(
            "join",
            &json!({ "room": "batch:456", "since": { "epoch": epoch, "offset": before } }),
            WAIT,
        )
        .await
        .expect("join with since");
    assert_eq!(
        (ack["recovered"].clone(), ack["replayed"].clone()),
        (json!(true), json!(1)),
        "{ack}"
    );

    // On the bus: garbage, and a copy of the event already relayed.
    let channel = "rtg:{1/batch:456}";
    assert_eq!(redis.cli(&["PUBLISH", channel, "not a frame"]).trim(), "1");
    let envelope = json!({
        "id": "dup", "channel": "batch_update", "event": "batch_created", "institutionId": 1,
        "payload": batch_created(1, &[], 2)["payload"], "timestamp": common::now() * 1000
    });
    let copy = format!("{offset}|{epoch}|{envelope}");
    assert_eq!(redis.cli(&["PUBLISH", channel, &copy]).trim(), "1");

    // A WebSocket handshake from a client of a protocol version the gateway does not speak.
    let refused = reqwest::Client::new()
        .get(format!("{}/socket.io/?EIO=3&transport=websocket", gw.url()))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    // A slow consumer: a client that stops reading while big events keep coming.
    let stalled = stalled_client(&gw, "batch:777").await;
    let padding = "x".repeat(32 * 1024);
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                let mut e = batch_created(1, &["batch:777"], 1000 * n + i);
                e["payload"]["padding"] = json!(padding);
                e
            })
            .collect();
        let (status, body) = gw
            .post(
                "/v1/publish/batch",
                Some(KEY),
                "application/json",
                Value::from(batch).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let m = gw.metrics().await;
        if metric(
            &m,
            "gateway_delivery_failures_total",
            "reason=\"buffer_full\"",
        ) > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a stalled client never counted as a slow consumer:\n{m}"
        );
    }
    drop(stalled);

    // Redis restarts without its data: reconnect, gap read, resync.
    redis.restart();
    gw.wait_readyz(200).await;

    // A client leaves.
    b.close().await;

    // Every metric the dashboard and the alerts read.
    let wanted = dashboard_and_alert_metrics();
    let deadline = Instant::now() + WAIT;
    let (text, scrape) = loop {
        let text = gw.metrics().await;
        let scrape = parse_exposition(&text);
        let missing: Vec<&String> = wanted
            .keys()
            .filter(|n| !scrape.samples.contains_key(*n))
            .collect();
        if missing.is_empty() {
            break (text, scrape);
        }
        assert!(
            Instant::now() < deadline,
            "used by the dashboard or the alerts but not on /metrics after traffic that \
             touches each of them: {missing:?}\n(a histogram is queried as NAME_bucket; a \
             counter only appears after its first increment)\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for (name, users) in &wanted {
        if !scrape.samples.contains_key(name) {
            continue;
        }
        let family = scrape.family(name);
        assert!(
            scrape.helps.contains(&family),
            "{name} (family {family}) has no # HELP line; used by {users:?}"
        );
        let kind = scrape.types.get(&family).map(String::as_str);
        if name.ends_with("_total") {
            assert_eq!(kind, Some("counter"), "{name} is named like a counter");
        }
        if kind == Some("histogram") {
            assert_ne!(
                name, &family,
                "{name} is a histogram: query {name}_bucket / _sum / _count; used by {users:?}"
            );
        }
    }

    // rate()/increase() only over counters and histogram series.
    let mut exprs: Vec<String> = dashboard_exprs();
    exprs.extend(alert_rules().iter().map(|(_, r)| s(&r["expr"]).to_string()));
    for expr in &exprs {
        for name in rated(expr) {
            let family = scrape.family(&name);
            let kind = scrape.types.get(&family).map(String::as_str);
            assert!(
                kind == Some("counter") || (kind == Some("histogram") && name != family),
                "rate/increase over {name} ({kind:?}) in: {expr}"
            );
        }
        // Matchers name labels the metric has, with values it can take.
        for (name, label, op, value) in matchers(expr) {
            if matches!(label.as_str(), "instance" | "job") {
                continue;
            }
            let family = scrape.family(&name);
            let allowed = allowed_labels(&family)
                .unwrap_or_else(|| panic!("{expr}: unknown metric {family}"));
            let values: &[&str] = match label.as_str() {
                "le" => &[],
                _ => allowed
                    .iter()
                    .find(|(l, _)| *l == label)
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| panic!("{expr}: {name} has no label {label}")),
            };
            if op == "=" || op == "!=" || op == "=~" {
                for alternative in value.split('|').filter(|v| !v.is_empty()) {
                    assert!(
                        label == "le" || values.contains(&alternative),
                        "{expr}: {label}={alternative:?} is not a value {name} takes ({values:?})"
                    );
                }
            }
        }
    }

    // Bounded labels everywhere on the page: no room, user, token or path ever becomes a label.
    let mut seen_label_names = BTreeSet::new();
    for (sample, label_sets) in &scrape.samples {
        let family = scrape.family(sample);
        let allowed = allowed_labels(&family).unwrap_or_else(|| {
            panic!(
                "{sample}: a metric this test does not know; describe it in the README's metric \
                 table and add its labels to allowed_labels()\n{text}"
            )
        });
        for labels in label_sets {
            for (label, value) in labels {
                seen_label_names.insert(label.clone());
                if label == "le" {
                    assert!(
                        value == "+Inf" || value.parse::<f64>().is_ok(),
                        "{sample}: le={value}"
                    );
                    continue;
                }
                if label == "quantile" {
                    assert!(value.parse::<f64>().is_ok(), "{sample}: quantile={value}");
                    continue;
                }
                let values = allowed
                    .iter()
                    .find(|(l, _)| *l == label.as_str())
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| panic!("{sample} has an unexpected label {label}={value}"));
                assert!(
                    values.contains(&value.as_str()),
                    "{sample}{{{label}=\"{value}\"}}: not one of the known values {values:?}"
                );
            }
        }
    }
    let allowed_names: BTreeSet<String> =
        // `tenant` is bounded too: `other` unless the tenants file lists the tenant.
        [
            "transport", "reason", "channel", "result", "le", "quantile", "action", "quota",
            "outcome", "tenant",
        ]
        .into_iter()
            .map(String::from)
            .collect();
    assert!(
        seen_label_names.is_subset(&allowed_names),
        "label names {seen_label_names:?} beyond {allowed_names:?}"
    );
    // The traffic above produced these, so the label checks saw real values.
    for (name, labels) in [
        (
            "gateway_auth_failures_total",
            "reason=\"token_invalid_signature\"",
        ),
        ("gateway_join_refused_total", "reason=\"forbidden_room\""),
        (
            "gateway_publish_requests_total",
            "result=\"invalid_api_key\"",
        ),
        (
            "gateway_publish_requests_total",
            "result=\"unknown_channel\"",
        ),
        ("gateway_recoveries_total", "result=\"recovered\""),
        ("gateway_bus_invalid_total", "reason=\"bad_frame\""),
        ("gateway_bus_duplicates_total", ""),
        ("gateway_delivery_failures_total", "reason=\"buffer_full\""),
        (
            "gateway_slow_consumer_disconnects_total",
            "transport=\"websocket\"",
        ),
        ("gateway_resyncs_total", ""),
        ("gateway_redis_reconnects_total", ""),
    ] {
        assert!(
            metric(&text, name, labels) >= 1.0,
            "{name}{{{labels}}}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A real Prometheus scraping three gateways
// ---------------------------------------------------------------------------------------------

/// deploy/prometheus/prometheus.yml, pointed at `admins`, scraping every second, with the
/// alert rules at their absolute path.
fn prometheus_config(admins: &[SocketAddr]) -> String {
    let mut config = yaml("deploy/prometheus/prometheus.yml");
    config["global"]["scrape_interval"] = json!("1s");
    config["global"]["scrape_timeout"] = json!("1s");
    config["global"]["evaluation_interval"] = json!("1s");
    let rules: Vec<Value> = config["rule_files"]
        .as_array()
        .expect("rule_files")
        .iter()
        .map(|f| json!(repo().join("deploy/prometheus").join(s(f))))
        .collect();
    config["rule_files"] = json!(rules);
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let mut job = jobs
        .iter()
        .find(|j| j["job_name"] == "realtime-gateway")
        .expect("a scrape job named realtime-gateway (the alerts select it)")
        .clone();
    let targets: Vec<String> = admins.iter().map(SocketAddr::to_string).collect();
    job["static_configs"] = json!([{ "targets": targets }]);
    config["scrape_configs"] = json!([job]);
    config.to_string()
}

#[tokio::test]
async fn prometheus_scrapes_three_gateways_and_counts_every_connection() {
    const CLIENTS: usize = 12;
    let redis = RedisServer::start();
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(&[("REDIS_URL", &redis.url())]))
        .collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }
    let admins: Vec<SocketAddr> = gws.iter().map(|g| g.admin).collect();
    let prom = Prometheus::start(&prometheus_config(&admins)).await;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let gw = &gws[i % gws.len()];
        clients.push(gw.client(&(100 + i).to_string(), "1", "STUDENT").await);
    }

    let deadline = Duration::from_secs(30);
    let (p, admins) = (&prom, &admins);
    prom.eventually("every gateway target up", deadline, || async move {
        let targets = p.active_targets().await?;
        let mut up: Vec<String> = targets
            .iter()
            .filter(|t| t["labels"]["job"] == "realtime-gateway" && t["health"] == "up")
            .map(|t| {
                t["labels"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        up.sort();
        let mut want: Vec<String> = admins.iter().map(SocketAddr::to_string).collect();
        want.sort();
        if up == want {
            Ok(())
        } else {
            Err(format!("up: {up:?}, want {want:?}; targets: {targets:?}"))
        }
    })
    .await;
    prom.eventually(
        "sum(gateway_connections) == clients",
        deadline,
        || async move {
            match p.scalar("sum(gateway_connections)").await? {
                Some(n) if n == CLIENTS as f64 => Ok(()),
                other => Err(format!("sum(gateway_connections) = {other:?}")),
            }
        },
    )
    .await;
    let per_instance = prom
        .query("sum by (instance) (gateway_connections)")
        .await
        .expect("query");
    assert_eq!(per_instance.len(), 3, "{per_instance:?}");
    for series in &per_instance {
        assert_eq!(
            series["value"][1],
            json!((CLIENTS / 3).to_string()),
            "{series}"
        );
    }

    // The alert rules are loaded and evaluate without errors.
    let alert_names: BTreeSet<String> = alert_rules().into_iter().map(|(n, _)| n).collect();
    let alert_names = &alert_names;
    prom.eventually("every alert rule evaluated", deadline, || async move {
        let rules = p.rules().await?;
        let loaded: BTreeSet<String> = rules
            .iter()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        if &loaded != alert_names {
            return Err(format!("loaded {loaded:?}, want {alert_names:?}"));
        }
        let unhealthy: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if unhealthy.is_empty() {
            Ok(())
        } else {
            Err(format!("not (yet) healthy: {unhealthy:?}"))
        }
    })
    .await;
    // A healthy cluster has no firing alert (pending ones cannot fire within this test).
    let firing = prom
        .query("ALERTS{alertstate=\"firing\"}")
        .await
        .expect("query");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy cluster: {firing:?}"
    );

    // Every dashboard query is valid PromQL for this Prometheus, and the core ones have data.
    for expr in dashboard_exprs() {
        let promql = grafana_to_promql(&expr, "10s");
        if let Err(e) = prom.query(&promql).await {
            panic!("dashboard query rejected by Prometheus: {e}\n{promql}");
        }
    }
    let instances = prom
        .query(&grafana_to_promql(
            "label_values(gateway_ready, instance)",
            "10s",
        ))
        .await
        .expect("query");
    assert_eq!(
        instances.len(),
        3,
        "the dashboard's instance variable: {instances:?}"
    );
    let scraped = prom
        .scalar("sum(up{job=\"realtime-gateway\", instance=~\".*\"})")
        .await
        .expect("query");
    assert_eq!(scraped, Some(3.0));
}

// ---------------------------------------------------------------------------------------------
// 4. docker-compose.yml and deploy/k8s against the binary
// ---------------------------------------------------------------------------------------------

/// A compose service's `environment` (map or list form) as a map.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|kv| {
                let (k, v) = s(kv).split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment: {other}"),
    }
}

/// (host path relative to the repo, container path) of a service's bind mounts.
fn compose_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let spec = s(v);
            let mut parts = spec.split(':');
            let host = parts.next()?;
            let target = parts.next()?;
            (host.starts_with("./") || host.starts_with('/')).then(|| {
                (
                    host.trim_start_matches("./").to_string(),
                    target.to_string(),
                )
            })
        })
        .collect()
}

/// The host file behind `container_path` in a service, through its bind mounts.
fn host_path(service: &Value, container_path: &str) -> PathBuf {
    let (host, target) = compose_mounts(service)
        .into_iter()
        .filter(|(_, target)| {
            container_path == target || container_path.starts_with(&format!("{target}/"))
        })
        .max_by_key(|(_, target)| target.len())
        .unwrap_or_else(|| panic!("{container_path} is not under any bind mount of {service}"));
    let rest = container_path[target.len()..].trim_start_matches('/');
    let path = match rest {
        "" => repo().join(host),
        rest => repo().join(host).join(rest),
    };
    assert!(
        path.exists(),
        "{container_path} -> {} does not exist",
        path.display()
    );
    path
}

fn depends_on(service: &Value) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Value::Array(list) => list
            .iter()
            .map(|n| (s(n).to_string(), "service_started".to_string()))
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let cond = v["condition"].as_str().unwrap_or("service_started");
                (k.clone(), cond.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn published(service: &Value) -> Vec<(u16, u16)> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let (host, container) = s(p).split_once(':').expect("HOST:CONTAINER");
            (host.parse().unwrap(), container.parse().unwrap())
        })
        .collect()
}

/// `http://host:port` -> (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .trim_start_matches("http://")
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port: {url}"));
    (host.to_string(), port.parse().unwrap())
}

#[tokio::test]
async fn compose_file_wires_the_stack_with_settings_the_binary_accepts() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let dockerfile = read("deploy/Dockerfile");

    // Three gateway services built from deploy/Dockerfile, none publishing a port.
    let gateways: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, svc)| svc["build"]["dockerfile"] == "deploy/Dockerfile")
        .collect();
    assert_eq!(gateways.len(), 3, "expected three gateway services");
    for (name, svc) in &gateways {
        assert_eq!(
            svc["build"]["context"], ".",
            "{name}: build context is the repo root"
        );
        assert!(
            svc["ports"].is_null(),
            "{name} publishes ports; only nginx should"
        );
        assert!(
            svc["deploy"]["replicas"].is_null(),
            "{name}: one service per gateway"
        );
    }
    let names: Vec<&str> = gateways.iter().map(|(n, _)| n.as_str()).collect();
    let env = compose_env(gateways[0].1);
    for (name, svc) in &gateways {
        assert_eq!(compose_env(svc), env, "{name}: gateways differ in settings");
    }

    // Settings: names, values, boot.
    assert!(
        env.get("GATEWAY_CORS_ORIGINS")
            .is_some_and(|o| !o.is_empty() && o != "*"),
        "the compose gateways name the browser origins they serve: {env:?}"
    );
    let listen_port = port_of(&env["GATEWAY_LISTEN"]);
    let admin = &env["GATEWAY_ADMIN_LISTEN"];
    assert_eq!(listen_port, 3000);
    assert_eq!(
        admin, "0.0.0.0:9100",
        "Prometheus in another container must reach /metrics"
    );
    let (redis_host, redis_port) = host_port(&env["REDIS_URL"]);
    let redis_svc = &services[&redis_host];
    let redis_image = s(&redis_svc["image"]);
    let major: u32 = redis_image
        .split(':')
        .nth(1)
        .and_then(|t| t.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("pin a Redis version: {redis_image}"));
    assert!(
        redis_image.starts_with("redis:") && major >= 7,
        "{redis_image}: Redis 7+"
    );
    assert_eq!(redis_port, 6379);
    let command: Vec<&str> = redis_svc["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(s)
        .collect();
    let arg = |flag: &str| {
        command
            .iter()
            .position(|a| *a == flag)
            .map(|i| command[i + 1])
    };
    assert_eq!(
        arg("--appendonly"),
        Some("yes"),
        "Redis needs its append-only file"
    );
    assert_eq!(arg("--maxmemory-policy"), Some("noeviction"));

    let private = RedisServer::start();
    let mut test_env = env.clone();
    test_env.insert("REDIS_URL".into(), private.url());
    the_binary_accepts("docker-compose.yml", &test_env).await;

    // Drain fits in the stop timeout (Docker's default, 10 s, would not).
    let drain = secs(&env["GATEWAY_DRAIN_DELAY"]) + secs(&env["GATEWAY_DRAIN_PERIOD"]);
    for (name, svc) in &gateways {
        let grace = secs(s(&svc["stop_grace_period"]));
        assert!(
            grace >= drain + 5.0,
            "{name}: stop_grace_period {grace}s < drain {drain}s + 5s"
        );
        assert_eq!(
            depends_on(svc).get(&redis_host).map(String::as_str),
            Some("service_healthy")
        );
    }
    // Health: the image's HEALTHCHECK probes the public port's /healthz.
    assert!(
        dockerfile.contains(&format!("/dev/tcp/127.0.0.1/{listen_port}"))
            && dockerfile.contains("GET /healthz"),
        "deploy/Dockerfile HEALTHCHECK must probe /healthz on {listen_port}"
    );

    // nginx: the template, rendered by the entrypoint for every gateway by name.
    let nginx = &services["nginx"];
    let nginx_env = compose_env(nginx);
    let want: Vec<String> = names.iter().map(|n| format!("{n}:{listen_port}")).collect();
    let got: Vec<&str> = nginx_env["GATEWAYS"].split_whitespace().collect();
    assert_eq!(got, want, "nginx GATEWAYS");
    let entry: Vec<&str> = nginx["entrypoint"]
        .as_array()
        .expect("entrypoint")
        .iter()
        .map(s)
        .collect();
    assert_eq!(
        host_path(nginx, entry[1]),
        repo().join("deploy/compose/nginx-entrypoint.sh")
    );
    assert_eq!(
        host_path(nginx, &nginx_env["TEMPLATE"]),
        repo().join("deploy/nginx/nginx.conf.template")
    );
    let nginx_port = port_of(&nginx_env["LISTEN"]);
    assert!(
        published(nginx).contains(&(8080, nginx_port)),
        "nginx on localhost:8080"
    );
    for name in &names {
        assert_eq!(
            depends_on(nginx).get(*name).map(String::as_str),
            Some("service_healthy"),
            "nginx resolves {name} at start"
        );
    }
    let haproxy = &services["haproxy"];
    assert_eq!(compose_env(haproxy)["GATEWAYS"], nginx_env["GATEWAYS"]);
    assert_eq!(
        host_path(haproxy, &compose_env(haproxy)["TEMPLATE"]),
        repo().join("deploy/haproxy/haproxy.cfg.template")
    );

    // Prometheus: scrapes every gateway's admin port, loads the rules.
    let prom = &services["prometheus"];
    let args: Vec<&str> = prom["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(s)
        .collect();
    let config_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    assert_eq!(
        host_path(prom, config_file),
        repo().join("deploy/prometheus/prometheus.yml")
    );
    let prom_config = yaml("deploy/prometheus/prometheus.yml");
    let job = prom_config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "realtime-gateway")
        .expect("job realtime-gateway");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    let targets: Vec<&str> = job["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let want: Vec<String> = names
        .iter()
        .map(|n| format!("{n}:{}", port_of(admin)))
        .collect();
    assert_eq!(targets, want, "Prometheus targets");
    assert!(published(prom).contains(&(9090, 9090)));

    // Grafana: data source -> the prometheus service; dashboard provisioned and home.
    let grafana = &services["grafana"];
    let genv = compose_env(grafana);
    let home = &genv["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"];
    assert_eq!(
        host_path(grafana, home),
        repo().join("deploy/grafana/realtime-gateway.json")
    );
    assert_eq!(
        host_path(grafana, "/etc/grafana/provisioning"),
        repo().join("deploy/grafana/provisioning")
    );
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasource["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(host_port(s(&ds["url"])), ("prometheus".to_string(), 9090));
    let provider = yaml("deploy/grafana/provisioning/dashboards/realtime-gateway.yml");
    let dir = s(&provider["providers"][0]["options"]["path"]);
    assert_eq!(Path::new(home).parent(), Some(Path::new(dir)));
    assert!(published(grafana).contains(&(3000, 3000)));
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/realtime-gateway.json")).unwrap();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            assert!(!panel["targets"].as_array().unwrap().is_empty());
        }
    }
    // The URLs the header comment promises.
    let text = read("docker-compose.yml");
    for url in [
        "http://localhost:3000",
        "http://localhost:9090",
        "http://localhost:8080",
    ] {
        assert!(
            text.contains(url),
            "docker-compose.yml should document {url}"
        );
    }

    // Demo traffic: the gateways' secrets, every gateway, publishing through nginx.
    let traffic = &services["traffic"];
    let tenv = compose_env(traffic);
    assert_eq!(tenv["JWT_SECRET"], env["JWT_SECRET"]);
    assert!(env["PUBLISH_API_KEYS"]
        .split(',')
        .any(|k| k == tenv["PUBLISH_API_KEY"]));
    let urls: Vec<String> = tenv["CLIENT_URLS"]
        .split([',', ' '])
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    let want: Vec<String> = names
        .iter()
        .map(|n| format!("http://{n}:{listen_port}"))
        .collect();
    assert_eq!(urls, want);
    assert_eq!(
        host_port(&tenv["PUBLISH_URL"]),
        ("nginx".to_string(), nginx_port)
    );
    let command: Vec<&str> = traffic["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(
        host_path(traffic, command[1]),
        repo().join("deploy/compose/traffic.mjs")
    );
}

/// Every document of every manifest in deploy/k8s, by (kind, name).
fn k8s_objects() -> (BTreeMap<(String, String), Value>, Vec<String>) {
    let mut objects = BTreeMap::new();
    let mut files = Vec::new();
    for entry in fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name == "kustomization.yaml" {
            continue;
        }
        files.push(name.clone());
        for doc in yaml_docs(&format!("deploy/k8s/{name}")) {
            let key = (
                s(&doc["kind"]).to_string(),
                s(&doc["metadata"]["name"]).to_string(),
            );
            assert!(objects.insert(key.clone(), doc).is_none(), "{key:?} twice");
        }
    }
    files.sort();
    (objects, files)
}

fn obj<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

/// Whether every `matchLabels` entry is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

#[tokio::test]
async fn kubernetes_manifests_wire_the_gateway_with_settings_the_binary_accepts() {
    let (objects, files) = k8s_objects();
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let mut resources: Vec<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(r).to_string())
        .collect();
    resources.sort();
    assert_eq!(
        resources, files,
        "kustomization.yaml resources vs files in deploy/k8s"
    );

    let deployment = obj(&objects, "Deployment", "realtime-gateway");
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Environment: ConfigMap + Secret through envFrom, plus any `env`.
    let mut env = BTreeMap::new();
    let mut secret_keys = BTreeSet::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            for (k, v) in obj(&objects, "ConfigMap", name)["data"]
                .as_object()
                .unwrap()
            {
                env.insert(k.clone(), s(v).to_string());
            }
        }
        if let Some(name) = from["secretRef"]["name"].as_str() {
            let secret = obj(&objects, "Secret", name);
            for (k, v) in secret["stringData"].as_object().unwrap() {
                env.insert(k.clone(), s(v).to_string());
                secret_keys.insert(k.clone());
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        env.insert(
            s(&e["name"]).to_string(),
            e["value"].as_str().unwrap_or_default().to_string(),
        );
    }
    assert!(
        secret_keys.contains("JWT_SECRET") && secret_keys.contains("PUBLISH_API_KEYS"),
        "secrets come from the Secret: {secret_keys:?}"
    );
    assert!(
        env.get("GATEWAY_CORS_ORIGINS")
            .is_some_and(|o| !o.is_empty() && o != "*"),
        "the ConfigMap names the browser origins: {env:?}"
    );
    // The Secret's placeholders are refused, naming the setting (the comment in secret.yaml).
    let mut placeholder_env = env.clone();
    placeholder_env.insert("REDIS_URL".into(), "redis://127.0.0.1:1".into());
    let refused = check_config(&placeholder_env).expect_err("placeholder secrets accepted");
    assert!(refused.contains("JWT_SECRET"), "{refused}");
    // With real values (and a private Redis) the exact environment passes and boots.
    let private = RedisServer::start();
    let mut test_env = env.clone();
    test_env.insert("JWT_SECRET".into(), SECRET.into());
    test_env.insert("PUBLISH_API_KEYS".into(), KEY.into());
    test_env.insert("REDIS_URL".into(), private.url());
    the_binary_accepts("deploy/k8s (ConfigMap + Secret)", &test_env).await;

    // Ports and probes.
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                s(&p["name"]).to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.get("http"), Some(&3000));
    assert_eq!(ports.get("metrics"), Some(&9100));
    assert_eq!(port_of(&env["GATEWAY_LISTEN"]) as u64, ports["http"]);
    assert_eq!(env["GATEWAY_ADMIN_LISTEN"], "0.0.0.0:9100");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }

    // Drain: preStop + delay + period + margin within the grace period.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    let pre_stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop exec")
        .iter()
        .map(s)
        .collect();
    assert_eq!(pre_stop[0], "sleep");
    let sleep = secs(pre_stop[1]);
    let drain = secs(&env["GATEWAY_DRAIN_DELAY"]) + secs(&env["GATEWAY_DRAIN_PERIOD"]);
    assert!(
        grace >= sleep + drain + 10.0,
        "terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + 10"
    );

    // Security and scheduling.
    let uid = dockerfile_user();
    let psc = &pod["spec"]["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(
        psc["runAsUser"].as_u64(),
        Some(uid),
        "runAsUser = the image's USER"
    );
    let csc = &c["securityContext"];
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]));
    for (kind, what) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][what].is_string(),
            "resources.{kind}.{what}"
        );
    }
    let anti = &pod["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&anti["labelSelector"]["matchLabels"], pod_labels));
    let strategy = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(strategy["maxUnavailable"], 0);

    // Services, ServiceMonitor, Ingress.
    let service = obj(&objects, "Service", "realtime-gateway");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let http = &service["spec"]["ports"][0];
    assert_eq!(
        (http["name"].as_str(), http["targetPort"].as_str()),
        (Some("http"), Some("http"))
    );
    let metrics_svc = obj(&objects, "Service", "realtime-gateway-metrics");
    assert!(selects(&metrics_svc["spec"]["selector"], pod_labels));
    assert_eq!(metrics_svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["targetPort"] != "metrics"),
        "the Service behind the Ingress must not expose /metrics"
    );
    let monitor = obj(&objects, "ServiceMonitor", "realtime-gateway");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &metrics_svc["metadata"]["labels"]
    ));
    assert!(!selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        (s(&endpoint["port"]), s(&endpoint["path"])),
        ("metrics", "/metrics")
    );
    let job = &metrics_svc["metadata"]["labels"][s(&monitor["spec"]["jobLabel"])];
    assert_eq!(job, "realtime-gateway", "the job the alert rules select");

    let ingress = obj(&objects, "Ingress", "realtime-gateway");
    let notes = &ingress["metadata"]["annotations"];
    let a = |k: &str| {
        notes[format!("nginx.ingress.kubernetes.io/{k}")]
            .as_str()
            .unwrap_or("")
    };
    assert_eq!(a("affinity"), "cookie");
    assert_eq!(a("affinity-mode"), "persistent");
    assert!(!a("session-cookie-name").is_empty());
    assert_eq!(a("service-upstream"), "false");
    let heartbeat = secs(&env["GATEWAY_PING_INTERVAL"]) + secs(&env["GATEWAY_PING_TIMEOUT"]);
    for timeout in ["proxy-read-timeout", "proxy-send-timeout"] {
        let t: f64 = a(timeout).parse().unwrap_or(0.0);
        assert!(
            t > heartbeat + 10.0,
            "{timeout} {t}s must outlast the heartbeat {heartbeat}s"
        );
    }
    let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["path"], "/socket.io/");
    assert_eq!(path["backend"]["service"]["name"], "realtime-gateway");
    assert_eq!(path["backend"]["service"]["port"]["name"], "http");

    // Disruption budget and autoscaler agree with the Deployment.
    let pdb = obj(&objects, "PodDisruptionBudget", "realtime-gateway");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    let hpa = obj(&objects, "HorizontalPodAutoscaler", "realtime-gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "realtime-gateway");
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
    let max_unavailable = pdb["spec"]["maxUnavailable"].as_u64().unwrap();
    assert!(
        min >= 3 && max_unavailable < min - 1,
        "min {min}, maxUnavailable {max_unavailable}"
    );

    // Redis: 7+, append-only, noeviction, reachable under REDIS_URL, only from gateways.
    let (redis_host, redis_port) = host_port(&env["REDIS_URL"]);
    let redis_service = obj(&objects, "Service", &redis_host);
    assert_eq!(
        redis_service["spec"]["ports"][0]["port"].as_u64(),
        Some(redis_port as u64)
    );
    let redis = obj(&objects, "StatefulSet", "redis");
    let redis_pod = &redis["spec"]["template"];
    assert!(selects(
        &redis_service["spec"]["selector"],
        &redis_pod["metadata"]["labels"]
    ));
    let rc = &redis_pod["spec"]["containers"][0];
    let image = s(&rc["image"]);
    let major: u32 = image
        .split(':')
        .nth(1)
        .and_then(|t| t.split('.').next())
        .and_then(|m| m.parse().ok())
        .expect("pinned Redis version");
    assert!(image.starts_with("redis:") && major >= 7, "{image}");
    let args: Vec<&str> = rc["args"].as_array().unwrap().iter().map(s).collect();
    let arg = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert_eq!(arg("--appendonly"), Some("yes"));
    assert_eq!(arg("--maxmemory-policy"), Some("noeviction"));
    assert_eq!(rc["volumeMounts"][0]["mountPath"], "/data");
    let policy = obj(&objects, "NetworkPolicy", "redis");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &redis_pod["metadata"]["labels"]
    ));
    assert!(selects(
        &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        pod_labels
    ));
}

// ---------------------------------------------------------------------------------------------
// 5. The compose stack's load balancer configs pass nginx -t / haproxy -c
// ---------------------------------------------------------------------------------------------

/// A temp dir that nginx workers (which drop to `nobody` when started as root) can enter.
fn open_temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs a compose entrypoint (`render` mode) with the service's environment, the template at
/// its path in this checkout, PREFIX in `dir`, and GATEWAYS from `gateways`; returns the text.
fn render_with_entrypoint(
    service: &Value,
    script: &str,
    gateways: &str,
    dir: &Path,
    out: &str,
) -> String {
    let env = compose_env(service);
    let status = Command::new("sh")
        .arg(repo().join("deploy/compose").join(script))
        .arg("render")
        .envs(&env)
        .env("GATEWAYS", gateways)
        .env("PREFIX", dir)
        .env("TEMPLATE", host_path(service, &env["TEMPLATE"]))
        .status()
        .expect("run sh");
    assert!(status.success(), "{script} render failed");
    fs::read_to_string(dir.join(out)).unwrap()
}

#[test]
fn compose_load_balancer_configs_render_and_pass_nginx_and_haproxy_checks() {
    let compose = yaml("docker-compose.yml");
    for (service, script, out) in [
        ("nginx", "nginx-entrypoint.sh", "nginx.conf"),
        ("haproxy", "haproxy-entrypoint.sh", "haproxy.cfg"),
    ] {
        let svc = &compose["services"][service];
        let gateways = compose_env(svc)["GATEWAYS"].clone();
        // gateway1:3000 ... resolve only on the compose network, and both nginx -t and
        // haproxy -c resolve server names. Check the config rendered for 127.0.0.1 on the same
        // ports, and that it differs from the one rendered for the names in the hosts only.
        let local = gateways
            .split_whitespace()
            .map(|g| format!("127.0.0.1:{}", port_of(g)))
            .collect::<Vec<_>>()
            .join(" ");
        let named_dir = open_temp_dir("compose-lb-");
        let local_dir = open_temp_dir("compose-lb-");
        let named = render_with_entrypoint(svc, script, &gateways, named_dir.path(), out);
        let checked = render_with_entrypoint(svc, script, &local, local_dir.path(), out);
        let mut expected = named.replace(&named_dir.path().display().to_string(), "PREFIX");
        for g in gateways.split_whitespace() {
            expected = expected.replace(g, &format!("127.0.0.1:{}", port_of(g)));
        }
        assert_eq!(
            checked.replace(&local_dir.path().display().to_string(), "PREFIX"),
            expected
        );
        let server_lines = checked
            .lines()
            .filter(|l| l.trim_start().starts_with("server ") && l.contains("127.0.0.1:"))
            .count();
        assert_eq!(
            server_lines,
            gateways.split_whitespace().count(),
            "{checked}"
        );
        let path = local_dir.path().join(out);
        match service {
            "nginx" => {
                assert!(checked.contains(&format!("listen {};", compose_env(svc)["LISTEN"])));
                common::lb::check_nginx(&path, local_dir.path());
            }
            _ => {
                assert!(checked.contains("cookie gw1") && checked.contains("cookie SERVERID"));
                common::lb::check_haproxy(&path);
            }
        };
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The compose demo traffic through the compose nginx
// ---------------------------------------------------------------------------------------------

/// `node`, with `--experimental-websocket` where WebSocket is not global yet (Node 20).
fn node() -> Command {
    let global = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .expect("node must be on the PATH");
    let mut cmd = Command::new("node");
    if !global.success() {
        cmd.arg("--experimental-websocket");
    }
    cmd
}

#[tokio::test]
async fn compose_demo_traffic_moves_every_gateway_through_the_compose_nginx() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let mut env = compose_env(&services["gateway1"]);
    let redis = RedisServer::start();
    env.insert("REDIS_URL".into(), redis.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&env)).collect();
    for gw in &gws {
        gw.wait_readyz(200).await;
    }

    // nginx exactly as the compose service starts it, with local addresses for the gateways.
    let dir = open_temp_dir("compose-nginx-");
    let nginx_addr = common::lb::free_addr();
    let nginx_env = compose_env(&services["nginx"]);
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("deploy/compose/nginx-entrypoint.sh"))
        .envs(&nginx_env)
        .env(
            "GATEWAYS",
            gws.iter()
                .map(|g| g.public.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        )
        .env("LISTEN", nginx_addr.to_string())
        .env("PREFIX", dir.path())
        .env("TEMPLATE", repo().join("deploy/nginx/nginx.conf.template"));
    let mut nginx = Spawned::start(cmd, "nginx", dir.path().join("nginx.out"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::lb::http_status(nginx_addr, "/healthz") != Ok(200) {
        assert!(nginx.running(), "nginx exited:\n{}", nginx.log());
        assert!(
            Instant::now() < deadline,
            "nginx did not serve:\n{}",
            nginx.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tenv = compose_env(&services["traffic"]);
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = node();
    cmd.arg(repo().join("deploy/compose/traffic.mjs"))
        .env(
            "CLIENT_URLS",
            gws.iter().map(Gateway::url).collect::<Vec<_>>().join(","),
        )
        .env("PUBLISH_URL", format!("http://{nginx_addr}"))
        .env("JWT_SECRET", &tenv["JWT_SECRET"])
        .env("PUBLISH_API_KEY", &tenv["PUBLISH_API_KEY"])
        .env("CLIENTS", "9")
        .env("TENANTS", "2")
        .env("INTERVAL_MS", "100")
        .env("CHURN_MS", "300")
        .env("ERROR_EVERY", "5")
        .env("STALE_MS", "500");
    let mut traffic = Spawned::start(cmd, "traffic.mjs", logs.path().join("traffic.log"));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(traffic.running(), "traffic.mjs exited:\n{}", traffic.log());
        let mut pages = Vec::new();
        for gw in &gws {
            pages.push(gw.metrics().await);
        }
        let every = |name: &str, labels: &str| pages.iter().all(|m| metric(m, name, labels) >= 1.0);
        let total =
            |name: &str, labels: &str| pages.iter().map(|m| metric(m, name, labels)).sum::<f64>();
        let done = every("gateway_connections_total", "")
            && every("gateway_events_delivered_total", "")
            && every("gateway_recoveries_total", "result=\"recovered\"")
            && total("gateway_publish_requests_total", "result=\"ok\"") >= 10.0
            && total(
                "gateway_publish_requests_total",
                "result=\"invalid_payload\"",
            ) >= 1.0
            && total("gateway_auth_failures_total", "reason=\"token_expired\"") >= 1.0;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo traffic did not reach every panel:\n{}\n{}",
            traffic.log(),
            pages.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The publishes went through nginx (its access log goes to its stdout, as in compose).
    assert!(nginx.log().contains("POST /v1/publish"), "{}", nginx.log());
    traffic.stop();
    nginx.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. deploy/Dockerfile
// ---------------------------------------------------------------------------------------------

/// Dockerfile instructions (continuations joined, comments dropped): (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (ins, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((ins.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

fn dockerfile_user() -> u64 {
    let user = dockerfile()
        .into_iter()
        .rfind(|(i, _)| i == "USER")
        .expect("USER")
        .1;
    user.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER")
}

#[tokio::test]
async fn dockerfile_builds_a_small_non_root_image_whose_health_check_works() {
    let ins = dockerfile();
    let all = |name: &str| -> Vec<String> {
        ins.iter()
            .filter(|(i, _)| i == name)
            .map(|(_, r)| r.clone())
            .collect()
    };
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage");
    assert!(froms[0].to_lowercase().ends_with(" as build"), "{froms:?}");
    let last_from = froms.last().unwrap();
    assert!(
        last_from.contains("slim") && !last_from.contains("rust"),
        "{last_from}"
    );
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "cargo build --release --locked"
    );
    // The build context is the repo root. The build stage sees only what it COPYs: copy
    // exactly that into an empty directory and run the build's cargo command there (as
    // `cargo check`, offline, with the same --locked and --bin), so a file the build needs but
    // the Dockerfile does not copy (a build script, an include_str! outside src/) fails here.
    let build = all("RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("a RUN with cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    let bin = words[words
        .iter()
        .position(|w| *w == "--bin")
        .expect("cargo build --bin")
        + 1];
    let context = tempfile::tempdir().unwrap();
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        let (sources, dest) = parts.split_at(parts.len() - 1);
        for src in sources {
            let from = repo().join(src);
            assert!(from.exists(), "COPY {src}: not in the repo");
            let to = if dest[0].ends_with('/') {
                context.path().join(src)
            } else {
                context.path().join(dest[0])
            };
            let status = Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(&to)
                .status()
                .unwrap();
            assert!(status.success(), "cp {src}");
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["check", "--offline", "--locked", "--bin", bin])
        .current_dir(context.path())
        .env(
            "CARGO_TARGET_DIR",
            repo().join("target").join("docker-context-check"),
        )
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "the Dockerfile's build stage would fail with only what it COPYs:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all("STOPSIGNAL") == vec!["SIGTERM".to_string()]);
    let entry: Vec<String> =
        serde_json::from_str(&all("ENTRYPOINT")[0]).expect("exec-form ENTRYPOINT (JSON array)");
    assert_eq!(entry, vec!["/usr/local/bin/realtime-gateway".to_string()]);
    assert!(
        all("CMD").is_empty(),
        "no CMD: the gateway's settings come from the environment"
    );
    assert!(dockerfile_user() >= 1000, "non-root USER");
    let expose: BTreeSet<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    assert_eq!(expose, BTreeSet::from(["3000", "9100"].map(String::from)));

    // ENV: names the binary reads; with the required secrets added, a valid configuration.
    let mut env = BTreeMap::new();
    for e in all("ENV") {
        for pair in e.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_string(), v.to_string());
        }
    }
    assert!(env.keys().all(|k| accepted_env().contains(k)), "{env:?}");
    assert_eq!(port_of(&env["GATEWAY_LISTEN"]), 3000);
    assert_eq!(env["GATEWAY_ADMIN_LISTEN"], "0.0.0.0:9100");
    let mut with_secrets = env.clone();
    with_secrets.insert("JWT_SECRET".into(), SECRET.into());
    with_secrets.insert("PUBLISH_API_KEYS".into(), KEY.into());
    check_config(&with_secrets).expect("the image's environment + secrets");

    // HEALTHCHECK: exec form, run here exactly as Docker would (port swapped for the test
    // gateway's): 0 against a live gateway, non-zero against a closed port.
    let health = all("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    let cmd_json = &health[0][health[0].find("CMD ").expect("HEALTHCHECK ... CMD") + 4..];
    let argv: Vec<String> = serde_json::from_str(cmd_json).expect("exec-form HEALTHCHECK CMD");
    let run = |port: u16| {
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.replace("/127.0.0.1/3000", &format!("/127.0.0.1/{port}")))
            .collect();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the health check");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let gw = Gateway::start(&[]);
    gw.wait_readyz(200).await;
    assert!(
        run(gw.public.port()),
        "HEALTHCHECK fails against a healthy gateway"
    );
    let closed = common::lb::free_addr().port();
    assert!(!run(closed), "HEALTHCHECK passes with nothing listening");
}
