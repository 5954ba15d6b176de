#!/usr/bin/env python3
"""Tenant isolation under a publish quota, in one run.

One gateway (release build) on a private redis-server; tenant 1 may publish QUOTA events/s
(tenants file). N connections of tenant 2 sit in batch:1 and measure delivery latency while a
tenant-2 publisher sends RATE events/s through `FCALL rtg_publish`:

  phase "alone":   only tenant 2 publishes;
  phase "flooded": tenant 1 publishes FLOOD events/s at the same time (over its quota, so
                   `rtg_publish` refuses most of them), tenant 2 publishes as before.

Prints tenant 2's loss and latency percentiles per phase, and what tenant 1 got through.
Usage: python3 bench/tenant_rate.py [--connections 500] [--rate 100] [--secs 15]
       [--flood 3000] [--quota 200] [--no-build]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
SECRET = "bench-secret-0123456789abcdef-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(cond, what, deadline=30.0):
    end = time.time() + deadline
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def ready(url):
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--secs", type=float, default=15.0)
    ap.add_argument("--flood", type=float, default=3000.0)
    ap.add_argument("--quota", type=int, default=200)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="rtg-bench-tenant-")
    procs = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        rport, gport, aport = free_port(), free_port(), free_port()
        start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
        redis = f"redis://127.0.0.1:{rport}"
        wait(lambda: subprocess.run(["redis-cli", "-p", str(rport), "PING"], capture_output=True,
                                    text=True).stdout.strip() == "PONG", "redis")
        tenants = os.path.join(work, "tenants.json")
        with open(tenants, "w") as f:
            json.dump({"tenants": {"1": {"publishRate": a.quota}}}, f)
        env = dict(os.environ, JWT_SECRET=SECRET, REDIS_URL=redis, GATEWAY_TENANTS_FILE=tenants,
                   GATEWAY_LOG="warn")
        gw = start([os.path.join(BIN, "realtime-gateway"), "--listen", f"127.0.0.1:{gport}",
                    "--admin-listen", f"127.0.0.1:{aport}"], env=env,
                   stderr=open(os.path.join(work, "gateway.log"), "w"))
        wait(lambda: ready(f"http://127.0.0.1:{gport}/readyz"), "gateway")
        clients = start([os.path.join(BIN, "rtg-loadgen"), "clients", "--target", f"127.0.0.1:{gport}",
                         "-n", str(a.connections), "--tenant", "2", "--join", "batch:1", "--control",
                         "--pid", str(gw.pid), "--label", "tenant2"],
                        env=dict(os.environ, JWT_SECRET=SECRET), stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)

        def line():
            out = clients.stdout.readline()
            if not out:
                raise SystemExit("the clients generator exited")
            return json.loads(out)

        first = line()
        assert first.get("type") == "ready", first

        def publisher(tenant, rate, out):
            return start([os.path.join(BIN, "rtg-loadgen"), "publish", "--redis", redis, "--tenant", tenant,
                          "--room", "batch:1", "--rate", str(rate), "--count", str(int(rate * a.secs)),
                          "--out", out], stdout=subprocess.DEVNULL)

        def t1_offset():
            out = subprocess.run(["redis-cli", "-p", str(rport), "HGET", "rtg:{1/batch:1}:m", "offset"],
                                 capture_output=True, text=True).stdout.strip()
            return int(out) if out.isdigit() else 0

        results = {}
        for phase in ["alone", "flooded"]:
            t1_before = t1_offset()
            clients.stdin.write("mark\n")
            clients.stdin.flush()
            line()
            t2_out = os.path.join(work, f"{phase}-t2.json")
            t1_out = os.path.join(work, f"{phase}-t1.json")
            flood = publisher("1", a.flood, t1_out) if phase == "flooded" else None
            t2 = publisher("2", a.rate, t2_out)
            t2.wait(timeout=a.secs * 4 + 30)
            if flood:
                flood.wait(timeout=a.secs * 4 + 30)
            clients.stdin.write(f"report {t2_out}\n")
            clients.stdin.flush()
            report = line()
            t2_pub = json.load(open(t2_out))
            entry = {
                "tenant2_published_ok": t2_pub["ok"],
                "tenant2_publish_errors": t2_pub["errors"],
                "tenant2_latency_ms": {k: v for k, v in (report.get("latency_ms") or {}).items()
                                       if k in ("count", "p50", "p90", "p99", "p999", "max")},
                "tenant2_expected": report["deliveries"]["expected"],
                "tenant2_received": report["deliveries"]["unique"],
                "tenant2_lost": report["deliveries"]["lost"],
                "tenant2_duplicated": report["deliveries"]["duplicated"],
            }
            if flood:
                t1 = json.load(open(t1_out))
                # The generator counts a whole pipeline as failed when one call in it is refused;
                # the room's offset says how many tenant-1 events really went in.
                accepted = t1_offset() - t1_before
                entry["tenant1_offered"] = t1["sent"]
                entry["tenant1_accepted"] = accepted
                entry["tenant1_refused"] = t1["sent"] - accepted
                entry["tenant1_accepted_per_sec"] = round(accepted / max(t1["duration_secs"], 1e-9), 1)
                sample = (t1.get("error_samples") or [""])[0]
                entry["tenant1_refusal_sample"] = sample[sample.find("rtg_publish"):][:110]
            results[phase] = entry
        clients.stdin.write("stop\n")
        clients.stdin.flush()
        print(json.dumps({"connected": first["connections"]["held"], "connections": a.connections, "tenant2_rate": a.rate, "secs": a.secs,
                          "tenant1_flood": a.flood, "tenant1_quota": a.quota, "phases": results}, indent=2))
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
