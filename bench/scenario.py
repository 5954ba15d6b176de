#!/usr/bin/env python3
"""Benchmark scenarios for realtime-gateway and its Socket.IO baseline (bench/README.md).

    python3 bench/scenario.py fanout --target both
    python3 bench/scenario.py all --target both --quick
    python3 bench/scenario.py idle --target both --transport websocket,polling,upgrade --quick

Every scenario starts what it needs (a private redis-server, the gateway release binary or the
Node baseline, rtg-loadgen processes), runs bounded in time, stops everything it started (process
groups, also on errors and Ctrl-C) and writes bench/results/<scenario>-<target>-<date>.json.
Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BASELINE = BENCH / "baseline"
GATEWAY_BIN = ROOT / "target" / "release" / "realtime-gateway"
LOADGEN_BIN = ROOT / "target" / "release" / "rtg-loadgen"
SECRET = "bench-secret-0123456789abcdef-0123456789"
PUBLISH_KEY = "bench-publish-key-0123456789"
# Each process may hold at most this many open files (hard limit of the machine).
MAX_SOCKETS_PER_SERVER = 19_900
# How clients connect (`rtg-loadgen clients --transport`): WebSocket from the start, long-polling
# only, or polling then the WebSocket upgrade (the stock socket.io-client's default).
TRANSPORTS = ["websocket", "polling", "upgrade"]
# The scenarios that run on every transport of --transport; the others always use WebSocket.
PER_TRANSPORT = ("idle", "fanout")

# Sizes of the full runs, and of --quick (a smoke of every scenario in a few minutes).
FULL = {
    "idle_sizes": [10_000, 19_000],
    "fanout_connections": 10_000,
    "fanout_rates": [1, 3, 10, 30, 60, 100, 150, 200],
    "small_room": 1_000,
    "rooms_connections": 10_000,
    "rooms_rates": [200, 1_000, 5_000, 10_000, 20_000, 40_000],
    # 20k would not fit: after the kill the survivor must hold them all, and one process may
    # hold at most 20,000 open files (sockets + Redis + listeners).
    "storm_connections": 19_600,
    "scale_connections": 100_000,
    "scale_servers": 6,
    "scale_rate": 1.0,
    "step_secs": 10.0,
    "ingest_events": 200_000,
    "compression_connections": 10_000,
    "compression_rates": [1, 3],
}
QUICK = {
    "idle_sizes": [2_000],
    "fanout_connections": 2_000,
    "fanout_rates": [1, 5, 15],
    "small_room": 200,
    "rooms_connections": 2_000,
    "rooms_rates": [200, 1_000],
    "storm_connections": 4_000,
    "scale_connections": 6_000,
    "scale_servers": 3,
    "scale_rate": 2.0,
    "step_secs": 4.0,
    "ingest_events": 30_000,
    "compression_connections": 2_000,
    "compression_rates": [5],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: every child gets its own process group; all are killed on the way out.
# --------------------------------------------------------------------------------------------

_children: list[subprocess.Popen] = []


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(cmd: list[str], log_path: Path, env: dict | None = None, stdin=None, stdout=None,
          cwd: Path | None = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    for k in ("REDIS_URL", "GATEWAY_LISTEN", "GATEWAY_ADMIN_LISTEN", "GATEWAY_DEV"):
        full_env.pop(k, None)
    full_env.update(env or {})
    err = open(log_path, "ab")
    p = subprocess.Popen(
        [str(c) for c in cmd],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else err,
        stderr=err,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    err.close()
    _children.append(p)
    return p


def kill(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def kill_all() -> None:
    while _children:
        kill(_children.pop())


atexit.register(kill_all)


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = check()
            if v:
                return v
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def proc_sample(pid: int) -> dict:
    """CPU seconds and RSS (KiB) of a process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"alive": False, "cpu_s": 0.0, "rss_kb": 0, "hwm_kb": 0}
    fields = stat.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    kb = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            kb[name] = int(rest.split()[0])
    return {
        "alive": True,
        "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
        "rss_kb": kb.get("VmRSS", 0),
        "hwm_kb": kb.get("VmHWM", 0),
    }


def procs_delta(servers: list, before: list[dict], after: list[dict]) -> dict:
    per = []
    for s, a, b in zip(servers, before, after):
        per.append({
            "name": s.name, "pid": s.pid, "alive": b["alive"],
            "cpu_s": round(b["cpu_s"] - a["cpu_s"], 3) if b["alive"] else None,
            "rss_before_kb": a["rss_kb"], "rss_after_kb": b["rss_kb"],
            "peak_rss_kb": max(a["hwm_kb"], b["hwm_kb"]),
        })
    return {
        "per_process": per,
        "cpu_s": round(sum(p["cpu_s"] or 0 for p in per), 3),
        "rss_before_kb": sum(p["rss_before_kb"] for p in per),
        "rss_after_kb": sum(p["rss_after_kb"] for p in per),
        "peak_rss_kb": sum(p["peak_rss_kb"] for p in per),
    }


# --------------------------------------------------------------------------------------------
# Redis, servers, load generators
# --------------------------------------------------------------------------------------------

class Run:
    """Scratch directory and the processes of one scenario run for one target."""

    def __init__(self, scenario: str, target: str, stamp: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"rtg-bench-{scenario}-{target}-"))
        self.procs: list[subprocess.Popen] = []
        self.seq = 0

    def path(self, name: str) -> Path:
        return self.dir / name

    def spawn(self, name: str, cmd: list, **kw) -> subprocess.Popen:
        p = spawn(cmd, self.path(f"{name}.log"), **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            kill(p)
            if p in _children:
                _children.remove(p)
        self.procs.clear()


def start_redis(run: Run) -> str:
    port = free_port()
    run.spawn("redis", [
        "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--maxclients", "10000", "--dir", run.dir, "--logfile", run.path("redis-server.log"),
    ])

    def ping():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_until(ping, 10, "redis-server")
    return f"redis://127.0.0.1:{port}"


def start_cluster(run: Run, primaries: int = 3) -> str:
    """A Redis Cluster of `primaries` primaries (no replicas: every core goes to serving) on free
    ports; returns the comma-separated redis:// URLs of its nodes."""
    ports = [free_port() for _ in range(primaries)]
    for port in ports:
        d = run.path(f"redis-{port}")
        d.mkdir()
        run.spawn(f"redis-{port}", [
            "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxclients", "10000", "--dir", d, "--logfile", d / "redis-server.log",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            # Its own bus port: the default (port + 10000) may be taken or past 65535.
            "--cluster-port", free_port(),
        ])
    for port in ports:
        wait_until(lambda: sh(["redis-cli", "-p", str(port), "PING"]).strip() == "PONG", 10, "cluster node")
    out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                          "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
    wait_until(lambda: all("cluster_state:ok" in sh(["redis-cli", "-p", str(p), "CLUSTER", "INFO"])
                           for p in ports), 30, "cluster ok")
    return ",".join(f"redis://127.0.0.1:{p}" for p in ports)


def start_bus(run: Run, opts) -> str:
    """One redis-server, or a 3-primary cluster with --redis cluster."""
    return start_cluster(run) if opts.redis_mode == "cluster" else start_redis(run)


def redis_pids(run: Run) -> list[int]:
    return [p.pid for p in run.procs if p.args and "redis-server" in str(p.args[0])]


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, port: int):
        self.name, self.proc, self.port = name, proc, port
        self.pid = proc.pid
        self.addr = f"127.0.0.1:{port}"


def start_servers(run: Run, target: str, count: int, redis_url: str,
                  env: dict | None = None, name: str = "") -> list[Server]:
    servers = []
    for i in range(count):
        port = free_port()
        admin = free_port()
        if target == "gateway":
            proc = run.spawn(f"gateway{name}-{i}", [
                GATEWAY_BIN, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
            ], env={
                "JWT_SECRET": SECRET, "PUBLISH_API_KEYS": PUBLISH_KEY,
                ("REDIS_CLUSTER_NODES" if "," in redis_url else "REDIS_URL"): redis_url,
                "GATEWAY_LOG": "warn", "GATEWAY_DRAIN_DELAY": "0s", **(env or {}),
            })
        else:
            proc = run.spawn(f"baseline-{i}", [
                "node", BASELINE / "server.js", "--port", port, "--redis", redis_url,
            ], env={"JWT_SECRET": SECRET, "NODE_ENV": "production"})
        servers.append(Server(f"{target}-{i}", proc, port))
        servers[-1].admin = f"127.0.0.1:{admin}"
    for s in servers:
        wait_until(lambda: s.proc.poll() is not None or http_status(f"http://{s.addr}/readyz") == 200,
                   60, f"{s.name} ready")
        if s.proc.poll() is not None:
            raise RuntimeError(f"{s.name} exited; see {run.dir}")
    return servers


def server_units(target: str, per_gateway: int = 1) -> int:
    """Processes that make one 'server' of a target: one gateway (it uses every core), or one
    Node process per core (Node runs JavaScript on one core)."""
    return per_gateway if target == "gateway" else (os.cpu_count() or 1) * per_gateway


class Loadgen:
    """One `rtg-loadgen clients --control` process; its stdout lines arrive on a queue."""

    def __init__(self, run: Run, name: str, args: list):
        self.name = name
        self.proc = run.spawn(name, [LOADGEN_BIN, "clients", "--control", "--label", name, *args],
                              env={"JWT_SECRET": SECRET}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        self.lines.put(None)

    def send(self, cmd: str) -> None:
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no '{kind}' within {timeout:.0f}s")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                raise RuntimeError(f"{self.name} exited (code {self.proc.poll()}) before '{kind}'")
            if msg.get("type") == kind:
                return msg


def start_clients(run: Run, servers: list[Server], n: int, opts, extra: list | None = None,
                  label: str = "lg") -> list[Loadgen]:
    """n connections over several generators (each at most --per-loadgen), round-robin over the
    servers, each generator from its own source addresses."""
    k = max(1, -(-n // max(1, opts.per_loadgen)))
    chunks = [n // k + (1 if i < n % k else 0) for i in range(k)]
    gens = []
    base = 0
    ramp = max(1.0, opts.ramp / len(chunks))
    for k, size in enumerate(chunks):
        args = ["-n", size, "--index-base", base, "--ramp", ramp, "--sources", 2,
                "--source-net", k + 1, "--drain", opts.drain]
        for s in servers:
            args += ["--target", s.addr]
        if k == 0:
            for s in servers:
                args += ["--pid", s.pid]
        args += extra or []
        gens.append(Loadgen(run, f"{label}{k}", args))
        base += size
    return gens


def wait_ready(gens: list[Loadgen], n: int, opts) -> list[dict]:
    timeout = 60 + n / max(1.0, opts.ramp) * 4
    return [g.expect("ready", timeout) for g in gens]


def mark(gens: list[Loadgen]) -> None:
    for g in gens:
        g.send("mark")
    for g in gens:
        g.expect("marked", 30)


def report(gens: list[Loadgen], files: list[Path], opts) -> list[dict]:
    for g in gens:
        g.send("report " + " ".join(str(f) for f in files))
    return [g.expect("report", opts.drain + 60) for g in gens]


def stop(gens: list[Loadgen]) -> list[dict]:
    for g in gens:
        try:
            g.send("stop")
        except (BrokenPipeError, OSError):
            pass
    out = []
    for g in gens:
        try:
            out.append(g.expect("final", 60))
        except RuntimeError as e:
            log(str(e))
    return out


def publish(run: Run, target: str, redis_url: str, rooms: list[str] | None, count: int, rate: float,
            user_rooms: int = 0) -> dict:
    run.seq += 1
    out = run.path(f"publish-{run.seq}.json")
    if target == "gateway":
        cmd = [LOADGEN_BIN, "publish", "--redis", redis_url, "--count", count, "--rate", rate, "--out", out]
        if "," in redis_url:
            cmd.append("--cluster")
    else:
        cmd = ["node", BASELINE / "publish.js", "--redis", redis_url, "--count", count, "--rate", rate,
               "--out", out, "--state", run.path("publish-state.json")]
    for r in rooms or []:
        cmd += ["--room", r]
    if user_rooms:
        cmd += ["--user-rooms", user_rooms]
    p = run.spawn(f"publish-{run.seq}", cmd, stdout=subprocess.DEVNULL)
    try:
        code = p.wait(timeout=count / max(rate, 0.001) + 60)
    except subprocess.TimeoutExpired:
        kill(p)
        raise RuntimeError("publisher did not finish in time")
    if code != 0 or not out.exists():
        raise RuntimeError(f"publisher failed (code {code}); see {run.dir}")
    result = json.loads(out.read_text())
    result["file"] = str(out)
    return result


# --------------------------------------------------------------------------------------------
# Merging the generators' reports
# --------------------------------------------------------------------------------------------

def merge_hist(lists: list[list]) -> list[list[int]]:
    acc: dict[int, int] = {}
    for lst in lists:
        for upper, count in lst or []:
            acc[upper] = acc.get(upper, 0) + count
    return [[u, acc[u]] for u in sorted(acc)]


def quantile(hist: list[list[int]], q: float, exact_max: float | None = None) -> float:
    """Same rule as the generator: upper edge of the bucket holding rank ceil(q*n)."""
    n = sum(c for _, c in hist)
    if n == 0:
        return 0.0
    rank = min(n, max(1, -(-int(q * n * 1_000_000) // 1_000_000)))
    seen = 0
    for upper, c in hist:
        seen += c
        if seen >= rank:
            return upper if exact_max is None else min(upper, exact_max)
    return float(hist[-1][0])


def latency_summary(hist: list[list[int]], max_ms: float) -> dict:
    max_us = max_ms * 1000
    return {
        "count": sum(c for _, c in hist),
        "p50": round(quantile(hist, 0.5, max_us) / 1000, 3),
        "p90": round(quantile(hist, 0.9, max_us) / 1000, 3),
        "p99": round(quantile(hist, 0.99, max_us) / 1000, 3),
        "p999": round(quantile(hist, 0.999, max_us) / 1000, 3),
        "max": round(max_ms, 3),
    }


def merge_reports(reports: list[dict]) -> dict:
    keys = ["expected", "received", "unique", "lost", "duplicated", "gaps", "missing_at_end",
            "untracked", "without_timestamp"]
    d = {k: sum(r["deliveries"][k] for r in reports) for k in keys}
    firsts = [r["deliveries"]["first_us"] for r in reports if r["deliveries"]["first_us"]]
    lasts = [r["deliveries"]["last_us"] for r in reports if r["deliveries"]["last_us"]]
    span = (max(lasts) - min(firsts)) / 1e6 if firsts and lasts and max(lasts) > min(firsts) else 0
    d["span_secs"] = round(span, 3)
    d["per_sec"] = round(d["received"] / span, 1) if span else 0.0
    hist = merge_hist([r["latency_hist_us"] for r in reports])
    lat = latency_summary(hist, max((r["latency_ms"]["max"] for r in reports), default=0))
    return {"deliveries": d, "latency_ms": lat, "connections": merge_connections(reports),
            "errors": merge_errors(reports)}


def merge_connections(reports: list[dict]) -> dict:
    cs = [r["connections"] for r in reports]
    out = {k: sum(c[k] for c in cs) for k in
           ["target", "held", "connected_once", "failed", "join_failed", "dropped"]}
    secs = max((c["connect_secs"] for c in cs), default=0)
    out["connect_secs"] = secs
    out["connect_rate"] = round(out["connected_once"] / secs, 1) if secs else 0.0
    hs = merge_hist([c.get("handshake_hist_us") for c in cs])
    hmax = max((c["handshake_ms"]["max"] for c in cs), default=0)
    out["handshake_ms"] = {"p50": round(quantile(hs, 0.5, hmax * 1000) / 1000, 3),
                           "p99": round(quantile(hs, 0.99, hmax * 1000) / 1000, 3), "max": hmax}
    return out


def run_errors(ready: list[dict], finals: list[dict]) -> dict:
    """Connection errors of a run: each generator's counts are cumulative, so its last report."""
    return merge_errors(finals if len(finals) == len(ready) else ready)


def merge_errors(reports: list[dict]) -> dict:
    out: dict[str, int] = {}
    for r in reports:
        for k, v in (r.get("errors") or {}).items():
            out[k] = out.get(k, 0) + v
    return out


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------

def scenario_idle(run: Run, target: str, opts) -> dict:
    """Resident memory per connection: N idle authenticated connections on one server."""
    results = []
    for n in opts.sizes["idle_sizes"]:
        log(f"idle {target}: {n} connections on {opts.transport}")
        redis_url = start_redis(run)
        servers = start_servers(run, target, server_units(target), redis_url)
        if n / len(servers) > MAX_SOCKETS_PER_SERVER:
            raise RuntimeError(f"{n} connections over {len(servers)} processes exceeds the fd limit")
        time.sleep(1.0)
        before = [proc_sample(s.pid) for s in servers]
        gens = start_clients(run, servers, n, opts, ["--transport", opts.transport])
        ready = wait_ready(gens, n, opts)
        after_connect = [proc_sample(s.pid) for s in servers]
        time.sleep(opts.settle)
        after = [proc_sample(s.pid) for s in servers]
        finals = stop(gens)
        conns = merge_connections(ready)
        procs = procs_delta(servers, before, after)
        connect_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after_connect, before))
        held = conns["held"]
        results.append({
            "connections": n,
            "transport": opts.transport,
            "held": held,
            "failed": conns["failed"],
            "connect_rate": conns["connect_rate"],
            "handshake_ms": conns["handshake_ms"],
            "server_processes": len(servers),
            "rss_before_kb": procs["rss_before_kb"],
            "rss_after_kb": procs["rss_after_kb"],
            "bytes_per_connection": round((procs["rss_after_kb"] - procs["rss_before_kb"]) * 1024 / held) if held else None,
            "connect_cpu_s": round(connect_cpu, 3),
            "cpu_us_per_connect": round(connect_cpu * 1e6 / held, 1) if held else None,
            "procs": procs,
            "errors": run_errors(ready, finals),
        })
        run.stop()
    return {"sizes": results}


def step_result(rate: float, members: int, merged: dict, procs: dict, pub: dict) -> dict:
    d = merged["deliveries"]
    return {
        "rate": rate,
        "members": members,
        "offered_per_sec": rate * members,
        "published": pub["ok"],
        "publish_errors": pub["errors"],
        "publish_achieved_rate": pub["achieved_rate"],
        "deliveries": d,
        "latency_ms": merged["latency_ms"],
        "server_cpu_s": procs["cpu_s"],
        "server_cpu_us_per_delivery": round(procs["cpu_s"] * 1e6 / d["received"], 2) if d["received"] else None,
        "server_cpu_cores": round(procs["cpu_s"] / d["span_secs"], 3) if d["span_secs"] else None,
        "held": merged["connections"]["held"],
    }


def run_step(run: Run, target: str, redis_url: str, servers, gens, opts, rate: float, members: int,
             rooms=None, user_rooms: int = 0) -> dict:
    mark(gens)
    before = [proc_sample(s.pid) for s in servers]
    gens_before = [proc_sample(g.proc.pid) for g in gens]
    count = max(1, int(round(rate * opts.sizes["step_secs"])))
    pub = publish(run, target, redis_url, rooms, count, rate, user_rooms)
    reports = report(gens, [Path(pub["file"])], opts)
    after = [proc_sample(s.pid) for s in servers]
    gens_after = [proc_sample(g.proc.pid) for g in gens]
    step = step_result(rate, members, merge_reports(reports), procs_delta(servers, before, after), pub)
    # The generators share the cores with the server: their CPU tells a saturated generator
    # (and, on polling, what the HTTP round trips cost the client side).
    gen_cpu = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(gens_after, gens_before))
    received = step["deliveries"]["received"]
    step["generators_cpu_s"] = round(gen_cpu, 3)
    step["generators_cpu_us_per_delivery"] = round(gen_cpu * 1e6 / received, 2) if received else None
    d, lat = step["deliveries"], step["latency_ms"]
    log(f"  rate {rate}/s x {members}: received {d['received']}/{d['expected']} lost {d['lost']} "
        f"dup {d['duplicated']} p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, "
        f"{d['per_sec']:.0f}/s, server {step['server_cpu_us_per_delivery']} us/delivery")
    return step


def clean(step: dict) -> bool:
    """Nothing lost, doubled or refused."""
    d = step["deliveries"]
    return (d["lost"] == 0 and d["duplicated"] == 0 and d["received"] >= d["expected"]
            and step["publish_errors"] == 0)


def passed(step: dict, opts) -> bool:
    return clean(step) and step["latency_ms"]["p99"] <= opts.p99_limit_ms


def saturated(step: dict, first: dict, opts) -> bool:
    """Stop stepping: something was lost or doubled, or p99 is past `--stop-p99-ms`."""
    return not clean(step) or step["latency_ms"]["p99"] > opts.stop_p99_ms


def best(steps: list[dict], ok) -> dict | None:
    good = [s for s in steps if ok(s)]
    return max(good, key=lambda s: s["offered_per_sec"]) if good else None


def summary(steps: list[dict], opts) -> dict:
    top = best(steps, lambda s: passed(s, opts))
    any_p99 = best(steps, lambda s: clean(s) and s["latency_ms"]["p99"] <= opts.stop_p99_ms)
    return {
        "max_sustained_per_sec": top["deliveries"]["per_sec"] if top else 0,
        "max_sustained_offered_per_sec": top["offered_per_sec"] if top else 0,
        "max_sustained_p99_ms": top["latency_ms"]["p99"] if top else None,
        "max_zero_loss_offered_per_sec": any_p99["offered_per_sec"] if any_p99 else 0,
        "max_zero_loss_per_sec": any_p99["deliveries"]["per_sec"] if any_p99 else 0,
        "max_zero_loss_p99_ms": any_p99["latency_ms"]["p99"] if any_p99 else None,
    }


def step_up(run: Run, target: str, redis_url: str, servers, gens, opts, rates, members: int,
            **kw) -> list[dict]:
    steps: list[dict] = []
    for rate in rates:
        step = run_step(run, target, redis_url, servers, gens, opts, rate, members, **kw)
        steps.append(step)
        if saturated(step, steps[0], opts):
            break
    return steps


def scenario_fanout(run: Run, target: str, opts) -> dict:
    """One big room; the publish rate steps up until p99 > limit or anything is lost."""
    n = opts.sizes["fanout_connections"]
    small = min(opts.sizes["small_room"], n)
    redis_url = start_bus(run, opts)
    servers = start_servers(run, target, server_units(target), redis_url)
    gens = start_clients(run, servers, n, opts, ["--join", "batch:1", "--join", f"batch:2@{small}",
                                                 "--transport", opts.transport])
    ready = wait_ready(gens, n, opts)
    conns = merge_connections(ready)
    log(f"fanout {target}: {conns['held']}/{n} connected on {opts.transport} at {conns['connect_rate']}/s")
    rate_30k = 30_000 / n
    rates = sorted(set(opts.sizes["fanout_rates"]) | {rate_30k})
    steps = step_up(run, target, redis_url, servers, gens, opts, rates, n, rooms=["batch:1"])
    at_30k = next((s for s in steps if abs(s["offered_per_sec"] - 30_000) < 1), None)
    if at_30k is None:
        log(f"fanout {target}: 30k deliveries/s in the {n}-member room (stepping stopped before it)")
        at_30k = run_step(run, target, redis_url, servers, gens, opts, rate_30k, n, rooms=["batch:1"])
    log(f"fanout {target}: {small}-member room at 30k deliveries/s")
    small_step = run_step(run, target, redis_url, servers, gens, opts, 30_000 / small, small,
                          rooms=["batch:2"])
    finals = stop(gens)
    return {
        "transport": opts.transport,
        "connections": conns,
        "steps": steps,
        **summary(steps, opts),
        "at_30k": at_30k,
        "p99_ms_at_30k": at_30k["latency_ms"]["p99"],
        "lost_at_30k": at_30k["deliveries"]["lost"],
        "small_room": small_step,
        "small_room_p99_ms_at_30k": small_step["latency_ms"]["p99"],
        "small_room_lost_at_30k": small_step["deliveries"]["lost"],
        "errors": run_errors(ready, finals),
    }


def presence_reads(addr: str, room: str, count: int) -> dict:
    """`count` sequential GET /v1/presence of `room` (after a warm-up): latency quantiles in ms,
    and the answer's count and listed members."""
    url = f"http://{addr}/v1/presence?institutionId=1&room={room}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {PUBLISH_KEY}"})
    times, body = [], {}
    for i in range(count + 50):
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        if i >= 50:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    q = lambda f: round(times[min(len(times) - 1, int(f * len(times)))], 2)  # noqa: E731
    return {"reads": count, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(times[-1], 2),
            "count": body.get("count"), "listed": len(body.get("members") or [])}


def scenario_presence(run: Run, target: str, opts) -> dict:
    """The same fan-out into one big room with presence off, then on (every member tracked), in
    one run on one Redis; then presence reads of a room of `small_room` members."""
    n = opts.sizes["fanout_connections"]
    small = min(opts.sizes["small_room"], n)
    rate = 30_000 / n
    redis_url = start_redis(run)
    out: dict = {"members": n, "rate": rate}
    for label, kinds in (("off", ""), ("on", "batch,exam")):
        servers = start_servers(run, target, 1, redis_url, {
            "GATEWAY_PRESENCE_KINDS": kinds, "GATEWAY_PRESENCE_MAX_MEMBERS": str(small),
        }, name=f"-presence-{label}")
        gens = start_clients(run, servers, n, opts, ["--join", "batch:1", "--join", f"exam:1@{small}"],
                             label=f"lg-{label}-")
        ready = wait_ready(gens, n, opts)
        conns = merge_connections(ready)
        log(f"presence {label}: {conns['held']}/{n} connected")
        step = run_step(run, target, redis_url, servers, gens, opts, rate, n, rooms=["batch:1"])
        out[f"fanout_presence_{label}"] = step
        if label == "on":
            reads = presence_reads(servers[0].addr, "exam:1", 1000)
            big = presence_reads(servers[0].addr, "batch:1", 200)
            log(f"presence reads of a {small}-member room: p50 {reads['p50_ms']} p99 {reads['p99_ms']} "
                f"max {reads['max_ms']} ms ({reads['listed']} listed); of the {n}-member room (count "
                f"only): p99 {big['p99_ms']} ms")
            out["reads"] = reads
            out["reads_big_room"] = big
        finals = stop(gens)
        out[f"errors_{label}"] = run_errors(ready, finals)
        for srv in servers:
            kill(srv.proc)  # at once: a draining gateway would compete with the next half
    off, on = out["fanout_presence_off"], out["fanout_presence_on"]
    out["p99_ms_off"], out["p99_ms_on"] = off["latency_ms"]["p99"], on["latency_ms"]["p99"]
    out["cpu_us_per_delivery_off"] = off["server_cpu_us_per_delivery"]
    out["cpu_us_per_delivery_on"] = on["server_cpu_us_per_delivery"]
    out["read_p99_ms"] = out["reads"]["p99_ms"]
    log(f"presence: fan-out p99 {out['p99_ms_off']} ms off, {out['p99_ms_on']} ms on; server "
        f"{out['cpu_us_per_delivery_off']} vs {out['cpu_us_per_delivery_on']} us/delivery; "
        f"read p99 {out['read_p99_ms']} ms")
    return out


def scenario_rooms(run: Run, target: str, opts) -> dict:
    """Everyone alone in a user room (plus one shared room); events to random users."""
    n = opts.sizes["rooms_connections"]
    redis_url = start_redis(run)
    servers = start_servers(run, target, server_units(target), redis_url)
    gens = start_clients(run, servers, n, opts, ["--join", "batch:1", "--user-rooms"])
    ready = wait_ready(gens, n, opts)
    conns = merge_connections(ready)
    log(f"rooms {target}: {conns['held']}/{n} connected")
    steps = step_up(run, target, redis_url, servers, gens, opts, opts.sizes["rooms_rates"], 1,
                    user_rooms=n)
    finals = stop(gens)
    return {
        "connections": conns,
        "steps": steps,
        **summary(steps, opts),
        "errors": run_errors(ready, finals),
    }


def survivors_sample(servers: list) -> dict:
    """CPU seconds and RSS (KiB) of several servers together."""
    samples = [proc_sample(s.pid) for s in servers]
    return {"cpu_s": sum(x["cpu_s"] for x in samples), "rss_kb": sum(x["rss_kb"] for x in samples)}


def scenario_storm(run: Run, target: str, opts) -> dict:
    """Clients on `--storm-servers` servers (2); one is SIGKILLed; its clients reconnect to the
    others."""
    n = opts.sizes["storm_connections"]
    count = max(2, opts.storm_servers)
    redis_url = start_bus(run, opts)
    # A Node "server" is one process here, like a gateway.
    servers = start_servers(run, target, count, redis_url)
    if n / (count - 1) > MAX_SOCKETS_PER_SERVER:
        log(f"warning: {n} connections cannot all fit on the {count - 1} surviving servers "
            f"(at most {MAX_SOCKETS_PER_SERVER} sockets per process)")
    extra = ["--reconnect", "--reconnect-base-ms", opts.reconnect_base_ms, "--connect-timeout", 20]
    positions = target == "gateway"
    if positions:
        # Each client holds a position in three rooms (two shared, its own user room) and comes
        # back with them: every reconnect is three history reads.
        extra += ["--recover", "--user-rooms", "--join", "batch:1", "--join", "batch:2"]
    gens = start_clients(run, servers, n, opts, extra)
    ready = wait_ready(gens, n, opts)
    conns = merge_connections(ready)
    if positions:
        publish(run, target, redis_url, ["batch:1", "batch:2"], 20, 100)
    log(f"storm {target}: {conns['held']}/{n} connected; killing {servers[0].name}")
    time.sleep(2.0)
    survivors = servers[1:]
    survivor_before = survivors_sample(survivors)
    redis_before = sum(proc_sample(pid)["cpu_s"] for pid in redis_pids(run))
    others = [g.proc.pid for g in gens] + redis_pids(run)
    others_before = sum(proc_sample(pid)["cpu_s"] for pid in others)
    killed_at_us = time.time_ns() // 1000
    kill(servers[0].proc)
    back = []
    for g in gens:
        try:
            back.append(g.expect("recovered", opts.storm_timeout))
        except RuntimeError as e:
            log(str(e))
    survivor_after = survivors_sample(survivors)
    others_cpu = sum(proc_sample(pid)["cpu_s"] for pid in others) - others_before
    redis_cpu = sum(proc_sample(pid)["cpu_s"] for pid in redis_pids(run)) - redis_before
    recoveries = {}
    if positions:
        for srv in survivors:
            try:
                with urllib.request.urlopen(f"http://{srv.admin}/metrics", timeout=5) as r:
                    for line in r.read().decode().splitlines():
                        if line.startswith("gateway_recoveries_total{"):
                            label, value = line.rsplit(" ", 1)
                            result = label.split('"')[1]
                            recoveries[result] = recoveries.get(result, 0.0) + float(value)
            except OSError as e:
                log(f"survivor metrics: {e}")
    finals = stop(gens)
    rec = [f.get("recovery", {}) for f in finals]
    recovered = sum(r.get("recovered", 0) for r in rec)
    not_recovered = sum(r.get("not_recovered", 0) for r in rec)
    last_recovered = max((r.get("last_recovered_us", 0) for r in rec), default=0)
    rc = [f.get("reconnect", {}) for f in finals]
    disconnects = sum(r.get("disconnects", 0) for r in rc)
    reconnects = sum(r.get("reconnects", 0) for r in rc)
    last_back = max((r.get("last_reconnect_us", 0) for r in rc), default=0)
    first_loss = min((r["first_loss_us"] for r in rc if r.get("first_loss_us")), default=0)
    hist = merge_hist([r.get("delay_hist_us") for r in rc])
    max_delay = max((r.get("delay_ms", {}).get("max", 0) for r in rc), default=0)
    all_back = len(back) == len(gens) and all(f["connections"]["held"] == f["connections"]["target"]
                                               for f in finals)
    secs = (last_back - killed_at_us) / 1e6 if last_back > killed_at_us else None
    return {
        "connections": conns,
        "servers": count,
        "killed": servers[0].name,
        "killed_at_us": killed_at_us,
        "disconnected": disconnects,
        "reconnected": reconnects,
        "all_back": all_back,
        "held_after": sum(f["connections"]["held"] for f in finals),
        "detect_ms": round((first_loss - killed_at_us) / 1000, 1) if first_loss else None,
        "recovery_secs": round(secs, 3) if secs else None,
        "reconnects_per_sec": round(reconnects / secs, 1) if secs else None,
        "reconnect_base_ms": opts.reconnect_base_ms,
        "reconnect_delay_ms": latency_summary(hist, max_delay),
        "failed_attempts": sum(f["connections"]["failed"] for f in finals),
        "survivor_cpu_s": round(survivor_after["cpu_s"] - survivor_before["cpu_s"], 3),
        # What one core of the survivor sustains: reconnects per CPU-second it spent on them.
        "reconnects_per_survivor_cpu_sec": (
            round(reconnects / (survivor_after["cpu_s"] - survivor_before["cpu_s"]), 1)
            if survivor_after["cpu_s"] > survivor_before["cpu_s"] else None),
        # The load generators and Redis share the same cores during the storm.
        "generators_and_redis_cpu_s": round(others_cpu, 3),
        "redis_cpu_s": round(redis_cpu, 3),
        "redis": opts.redis_mode,
        # With positions: each room's answer on reconnect (3 rooms per client).
        "rooms_recovered": recovered if positions else None,
        "rooms_not_recovered": not_recovered if positions else None,
        "survivor_recoveries_by_result": recoveries,
        "last_recovery_secs": (round((last_recovered - killed_at_us) / 1e6, 3)
                               if positions and last_recovered > killed_at_us else None),
        "survivor_rss_kb": survivor_after["rss_kb"],
        "errors": run_errors(ready, finals),
    }


def scenario_ingest(run: Run, target: str, opts) -> dict:
    """Publishes/s through rtg_publish into many rooms, as fast as the bus takes them, from
    --publishers processes at once; no gateway (the Redis side of publishing alone)."""
    if target != "gateway":
        raise RuntimeError("ingest measures the gateway's Redis function only (--target gateway)")
    redis_url = start_bus(run, opts)
    # No gateway runs here to load the function library: load it on every node.
    library = (ROOT / "src" / "bus" / "redis" / "function.lua").read_bytes()
    for url in redis_url.split(","):
        port = url.rsplit(":", 1)[1]
        subprocess.run(["redis-cli", "-p", port, "-x", "FUNCTION", "LOAD", "REPLACE"], input=library,
                       check=True, capture_output=True)
    count = opts.sizes["ingest_events"]
    procs, outs = [], []
    before = sum(proc_sample(pid)["cpu_s"] for pid in redis_pids(run))
    started = time.monotonic()
    for k in range(opts.publishers):
        run.seq += 1
        out = run.path(f"ingest-{k}.json")
        cmd = [LOADGEN_BIN, "publish", "--redis", redis_url, "--count", count, "--rate", 0,
               "--user-rooms", 10_000, "--user-base", k * 10_000, "--batch", 200, "--out", out]
        if "," in redis_url:
            cmd.append("--cluster")
        procs.append(run.spawn(f"ingest-{k}", cmd, stdout=subprocess.DEVNULL))
        outs.append(out)
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise RuntimeError(f"publisher failed; see {run.dir}")
    secs = time.monotonic() - started
    redis_cpu = sum(proc_sample(pid)["cpu_s"] for pid in redis_pids(run)) - before
    reports = [json.loads(o.read_text()) for o in outs]
    ok = sum(r["ok"] for r in reports)
    return {
        "redis": opts.redis_mode,
        "redis_processes": len(redis_pids(run)),
        "publishers": opts.publishers,
        "rooms": 10_000 * opts.publishers,
        "published": ok,
        "errors": sum(r["errors"] for r in reports),
        "error_samples": [e for r in reports for e in r["error_samples"]][:5],
        "publishes_per_sec": round(ok / secs, 1),
        "redis_cpu_s": round(redis_cpu, 3),
        "redis_cpu_us_per_publish": round(redis_cpu * 1e6 / ok, 2) if ok else None,
    }


def scenario_scale(run: Run, target: str, opts) -> dict:
    """Many connections over several server processes while a modest fan-out runs."""
    n = opts.sizes["scale_connections"]
    k = opts.sizes["scale_servers"]
    if n / k > MAX_SOCKETS_PER_SERVER:
        raise RuntimeError(f"{n} connections over {k} processes exceeds {MAX_SOCKETS_PER_SERVER} each")
    redis_url = start_redis(run)
    servers = start_servers(run, target, k, redis_url)
    time.sleep(1.0)
    before = [proc_sample(s.pid) for s in servers]
    gens = start_clients(run, servers, n, opts, ["--join", "batch:1"])
    ready = wait_ready(gens, n, opts)
    conns = merge_connections(ready)
    after_connect = [proc_sample(s.pid) for s in servers]
    log(f"scale {target}: {conns['held']}/{n} connected over {k} servers and {len(gens)} generators")
    rate = opts.sizes["scale_rate"]
    step = run_step(run, target, redis_url, servers, gens, opts, rate, n, rooms=["batch:1"])
    finals = stop(gens)
    mem = procs_delta(servers, before, after_connect)
    held = conns["held"]
    return {
        "connections": conns,
        "servers": k,
        "generators": len(gens),
        "step": step,
        "deliveries_per_sec": step["deliveries"]["per_sec"],
        "lost": step["deliveries"]["lost"],
        "p99_ms": step["latency_ms"]["p99"],
        "rss_after_connect_kb": mem["rss_after_kb"],
        "bytes_per_connection": round((mem["rss_after_kb"] - mem["rss_before_kb"]) * 1024 / held) if held else None,
        "errors": run_errors(ready, finals),
    }


FLOOR_SHAPES = [64, 9_000]


def floor_once(pairs: int) -> dict:
    """Three runs of `rtg-loadgen floor` over `pairs` connections; the median one."""
    runs = []
    for _ in range(3):
        out = subprocess.run([str(LOADGEN_BIN), "floor", "--pairs", str(pairs)], capture_output=True,
                             text=True, timeout=300, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["write_cpu_us"])
    result = dict(runs[1])
    result["runs_write_cpu_us"] = [r["write_cpu_us"] for r in runs]
    log(f"floor: {result['write_cpu_us']} us CPU per {result['frame_bytes']}-byte loopback write "
        f"over {pairs} connections (runs: {result['runs_write_cpu_us']})")
    return result


def scenario_floor(run: Run, target: str, opts) -> dict:
    """CPU per loopback write of a delivery-sized frame, written round-robin over a few hot
    connections (64) and over as many as a fan-out has (9,000: what one process may hold in
    pairs), where every write touches a cold socket."""
    shapes = [floor_once(p) for p in FLOOR_SHAPES]
    return {**shapes[0], "shapes": shapes}


def scenario_compression(run: Run, target: str, opts) -> dict:
    """permessage-deflate: bytes per delivery of every catalog event in each encoding
    (`rtg-loadgen sizes`), then the same fan-out twice on a fresh gateway, clients without and
    with the extension: idle memory per connection, server CPU per delivery and p99 per rate."""
    out = subprocess.run([str(LOADGEN_BIN), "sizes"], capture_output=True, text=True, timeout=60,
                         check=True)
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    n = opts.sizes["compression_connections"]
    modes = {}
    for mode in ("plain", "deflate"):
        redis_url = start_redis(run)
        servers = start_servers(run, target, 1, redis_url)
        time.sleep(1.0)
        before = [proc_sample(s.pid) for s in servers]
        extra = ["--join", "batch:1"] + (["--deflate"] if mode == "deflate" else [])
        gens = start_clients(run, servers, n, opts, extra, label=f"{mode}-")
        ready = wait_ready(gens, n, opts)
        time.sleep(opts.settle)
        after = [proc_sample(s.pid) for s in servers]
        conns = merge_connections(ready)
        procs = procs_delta(servers, before, after)
        held = conns["held"]
        log(f"compression {mode}: {held}/{n} connected")
        steps = [run_step(run, target, redis_url, servers, gens, opts, rate, n, rooms=["batch:1"])
                 for rate in opts.sizes["compression_rates"]]
        finals = stop(gens)
        received = sum(s["deliveries"]["received"] for s in steps)
        # The generators share the cores: inflating is their cost, and it shows in the latency.
        gen_cpu = sum(f.get("self", {}).get("cpu_s", 0) for f in finals)
        modes[mode] = {
            "connections": conns,
            "idle_bytes_per_connection": round((procs["rss_after_kb"] - procs["rss_before_kb"]) * 1024 / held) if held else None,
            "steps": steps,
            "generator_cpu_s": round(gen_cpu, 3),
            "generator_cpu_us_per_delivery": round(gen_cpu * 1e6 / received, 2) if received else None,
            "errors": run_errors(ready, finals),
        }
        run.stop()
    ratios = []
    for p, d in zip(modes["plain"]["steps"], modes["deflate"]["steps"]):
        cp, cd = p["server_cpu_us_per_delivery"], d["server_cpu_us_per_delivery"]
        ratios.append({
            "rate": p["rate"],
            "offered_per_sec": p["offered_per_sec"],
            "cpu_us_per_delivery": {"plain": cp, "deflate": cd},
            "cpu_ratio": round(cd / cp, 3) if cp and cd else None,
            "p99_ms": {"plain": p["latency_ms"]["p99"], "deflate": d["latency_ms"]["p99"]},
            "lost": {"plain": p["deliveries"]["lost"], "deflate": d["deliveries"]["lost"]},
        })
        log(f"compression at {p['offered_per_sec']:.0f}/s: CPU {cp} -> {cd} us/delivery "
            f"({ratios[-1]['cpu_ratio']}x), p99 {p['latency_ms']['p99']} -> {d['latency_ms']['p99']} ms")
    return {"sizes": sizes, **modes, "compare": ratios}


SCENARIOS = {
    "floor": scenario_floor,
    "idle": scenario_idle,
    "fanout": scenario_fanout,
    "rooms": scenario_rooms,
    "storm": scenario_storm,
    "scale": scenario_scale,
    "ingest": scenario_ingest,
    "presence": scenario_presence,
    "compression": scenario_compression,
}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "redis": sh(["redis-server", "--version"]),
        "node": sh(["node", "--version"]),
        "gateway_commit": sh(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def versions(target: str) -> dict:
    if target == "gateway":
        return {"gateway": sh([str(GATEWAY_BIN), "--version"])}
    lock = BASELINE / "package-lock.json"
    try:
        pkgs = json.loads(lock.read_text())["packages"]
        return {name.removeprefix("node_modules/"): pkgs[name]["version"] for name in
                ["node_modules/socket.io", "node_modules/@socket.io/redis-adapter",
                 "node_modules/@socket.io/redis-emitter", "node_modules/redis"] if name in pkgs}
    except (OSError, KeyError, json.JSONDecodeError):
        return {}


def prepare(targets: list[str], opts) -> None:
    if not opts.no_build:
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--bin", "realtime-gateway", "--bin", "rtg-loadgen"],
                       cwd=ROOT, check=True)
    for b in (GATEWAY_BIN, LOADGEN_BIN):
        if not b.exists():
            raise SystemExit(f"{b} is missing: run cargo build --release")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on the PATH")
    if "baseline" in targets and not (BASELINE / "node_modules" / "socket.io").exists():
        log("npm ci in bench/baseline")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BASELINE, check=True)


def run_one(name: str, target: str, opts, stamp: str) -> Path:
    run = Run(name, target, stamp)
    started = time.time()
    log(f"== {name} / {target} / {opts.transport} (scratch: {run.dir})")
    try:
        result = SCENARIOS[name](run, target, opts)
    finally:
        run.stop()
    doc = {
        "scenario": name,
        "target": target,
        "run": stamp,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_secs": round(time.time() - started, 1),
        "quick": opts.quick,
        "redis": opts.redis_mode,
        "transport": opts.transport,
        "params": {k: v for k, v in opts.sizes.items()} | {
            "ramp": opts.ramp, "per_loadgen": opts.per_loadgen, "p99_limit_ms": opts.p99_limit_ms,
            "stop_p99_ms": opts.stop_p99_ms,
            "drain": opts.drain},
        "machine": machine(),
        "versions": versions(target),
        "result": result,
    }
    opts.results.mkdir(parents=True, exist_ok=True)
    suffix = "-cluster" if opts.redis_mode == "cluster" else ""
    # WebSocket results keep the names they always had.
    if opts.transport != "websocket":
        suffix = f"-{opts.transport}{suffix}"
    path = opts.results / f"{name}-{target}{suffix}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if opts.keep_logs:
        log(f"logs kept in {run.dir}")
    else:
        shutil.rmtree(run.dir, ignore_errors=True)
    log(f"wrote {path}")
    return path


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def scenario_names(s: str) -> list[str]:
    if s == "all":
        return [n for n in SCENARIOS if n != "ingest"]
    names = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in names if x not in SCENARIOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)} or all; got {s!r}")
    # In the order of SCENARIOS, like all.
    return [n for n in SCENARIOS if n in names]


def transports(s: str) -> list[str]:
    names = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in names if x not in TRANSPORTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"transports are {', '.join(TRANSPORTS)}; got {s!r}")
    return list(dict.fromkeys(names))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", type=scenario_names,
                    help=f"one of {', '.join(SCENARIOS)}, several joined by commas, or all (every one but ingest)")
    ap.add_argument("--target", choices=["gateway", "baseline", "both"], default="both")
    ap.add_argument("--transport", dest="transports", type=transports, default=["websocket"],
                    help="idle / fanout: comma-separated transports of the clients, each run in turn "
                         f"({','.join(TRANSPORTS)}; default websocket); other scenarios use websocket")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run of the harness")
    ap.add_argument("--sizes", type=ints, help="idle: connection counts (e.g. 10000,19000)")
    ap.add_argument("--connections", type=int, help="fanout / rooms / storm / scale: connections")
    ap.add_argument("--rates", type=floats,
                    help="fanout / rooms / compression: publish rates to step through (when one of them is run)")
    ap.add_argument("--small-room", type=int, help="fanout: members of the small room")
    ap.add_argument("--servers", type=int, help="scale: server processes")
    ap.add_argument("--scale-rate", type=float, help="scale: events per second")
    ap.add_argument("--step-secs", type=float, help="seconds of publishing per step")
    ap.add_argument("--ramp", type=float, default=3000, help="connections started per second (total)")
    ap.add_argument("--per-loadgen", type=int, default=9_500, help="most connections per generator process")
    ap.add_argument("--p99-limit-ms", type=float, default=100.0)
    ap.add_argument("--stop-p99-ms", type=float, default=1000.0,
                    help="fanout / rooms: stepping stops once p99 passes this (or anything is lost)")
    ap.add_argument("--drain", type=float, default=10.0, help="seconds a report waits for late deliveries")
    ap.add_argument("--settle", type=float, default=5.0, help="idle: seconds between connecting and measuring")
    ap.add_argument("--reconnect-base-ms", type=int, default=500, help="storm: first reconnect delay bound")
    ap.add_argument("--storm-timeout", type=float, default=120.0)
    ap.add_argument("--storm-servers", type=int, default=2,
                    help="storm: servers; one is killed and its clients spread over the others")
    ap.add_argument("--redis", dest="redis_modes", choices=["single", "cluster", "both"], default="single",
                    help="ingest / fanout / storm: one redis-server, a 3-primary Redis Cluster, or both in turn")
    ap.add_argument("--publishers", type=int, default=2, help="ingest: publisher processes at once")
    ap.add_argument("--events", type=int, help="ingest: events per publisher")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release")
    ap.add_argument("--keep-logs", action="store_true", help="keep a successful run's scratch directory (logs)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON results")
    opts = ap.parse_args()

    sizes = dict(QUICK if opts.quick else FULL)
    if opts.sizes:
        sizes["idle_sizes"] = opts.sizes
    if opts.connections:
        for k in ("fanout_connections", "rooms_connections", "storm_connections", "scale_connections",
                  "compression_connections"):
            sizes[k] = opts.connections
    stepped = [n for n in opts.scenario if n in ("fanout", "rooms", "compression")]
    # Rates only make sense for one kind of step (fan-out rates are not rooms rates).
    if opts.rates and len(stepped) == 1:
        sizes[f"{stepped[0]}_rates"] = opts.rates
    if opts.events:
        sizes["ingest_events"] = opts.events
    for arg, key in (("small_room", "small_room"), ("servers", "scale_servers"),
                     ("scale_rate", "scale_rate"), ("step_secs", "step_secs")):
        if getattr(opts, arg) is not None:
            sizes[key] = getattr(opts, arg)
    opts.sizes = sizes

    targets = ["gateway", "baseline"] if opts.target == "both" else [opts.target]
    names = opts.scenario
    modes = ["single", "cluster"] if opts.redis_modes == "both" else [opts.redis_modes]
    _raise_nofile()  # children inherit it
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    failures = 0
    try:
        prepare(targets, opts)
        for name in names:
            only = {"floor": ["machine"], "presence": ["gateway"], "compression": ["gateway"]}
            # Per transport, the gateway then the baseline: the two sides of a comparison run
            # close together.
            runs = [(tr, t, m) for tr in (opts.transports if name in PER_TRANSPORT else ["websocket"])
                    for t in only.get(name, targets)
                    for m in (modes if name in ("ingest", "fanout", "storm") else ["single"])]
            for transport, target, mode in runs:
                opts.redis_mode = mode
                opts.transport = transport
                try:
                    run_one(name, target, opts, stamp)
                except Exception as e:  # noqa: BLE001 - report and go on with the next one
                    failures += 1
                    log(f"!! {name} / {target} / {transport} / redis {mode} failed: {e}")
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        kill_all()
        return 130
    finally:
        kill_all()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
