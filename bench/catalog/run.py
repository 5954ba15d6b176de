#!/usr/bin/env python3
"""Publish validation, before and after, in one run.

Builds two release gateways: the current tree and an older commit (`--baseline`, by default the
last one with the hand-written Rust catalog), then, on this machine and in this run:

1. publishes/s through `POST /v1/publish` (embedded bus, one gateway at a time, `rtg-loadgen
   publish --http` sending as fast as `--concurrency` requests in flight allow), alternating
   baseline and current for `--rounds` rounds;
2. validation alone per event type (`PublishRules::validate`, bench/catalog/validate.rs built
   against each tree).

Writes bench/results/catalog-validation-<time>.json and prints a table. Every process it starts
is killed at the end; every wait has a deadline.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "bench-secret-0123456789abcdef-0123456789"
KEY = "bench-publish-key-0123456789"
# The last commit whose catalog was hand-written Rust (enums, structs and a schema table).
DEFAULT_BASELINE = "6dd52dd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(tree, target_dir, out_dir, bins):
    """Release build of `tree` into the shared target dir; copies the binaries to `out_dir`."""
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    cmd = ["cargo", "build", "--release", "--example", "validate_bench"]
    for b in bins:
        cmd += ["--bin", b]
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    os.makedirs(out_dir, exist_ok=True)
    release = os.path.join(target_dir, "release")
    for b in bins:
        shutil.copy2(os.path.join(release, b), os.path.join(out_dir, b))
    shutil.copy2(os.path.join(release, "examples", "validate_bench"), os.path.join(out_dir, "validate_bench"))


def wait_ready(url, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in time")


def publish_rate(gateway, loadgen, count, concurrency, logdir, label):
    port, admin = free_port(), free_port()
    log = open(os.path.join(logdir, f"{label}.log"), "w")
    env = dict(
        os.environ,
        JWT_SECRET=SECRET,
        PUBLISH_API_KEYS=KEY,
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        GATEWAY_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        GATEWAY_PUBLISH_RATE="100000000",
        GATEWAY_LOG="warn",
    )
    env.pop("REDIS_URL", None)
    env.pop("GATEWAY_CATALOG", None)
    proc = subprocess.Popen([gateway], env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, time.time() + 20)
        out = subprocess.run(
            [loadgen, "publish", "--http", url, "--key", KEY, "--room", "batch:1",
             "--count", str(count), "--rate", "100000000", "--concurrency", str(concurrency)],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout
        report = json.loads(out.strip().splitlines()[-1])
        if report["errors"] or report["ok"] != count:
            raise RuntimeError(f"{label}: {report['errors']} errors: {report['error_samples']}")
        return report["achieved_rate"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def validation(binary, iterations):
    out = subprocess.run(
        [binary, "--iterations", str(iterations), "--jwt-secret", SECRET],
        check=True, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "GATEWAY_CATALOG"},
    ).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit to compare with")
    ap.add_argument("--count", type=int, default=20000, help="events per publish round")
    ap.add_argument("--concurrency", type=int, default=32, help="HTTP requests in flight")
    ap.add_argument("--rounds", type=int, default=3, help="publish rounds per build (alternating)")
    ap.add_argument("--iterations", type=int, default=20000, help="validations per event type")
    ap.add_argument("--no-build", action="store_true", help="reuse the binaries of the last run")
    args = ap.parse_args()

    target = os.path.join(ROOT, "target")
    bins_dir = os.path.join(target, "bench-catalog")
    base_bins, cur_bins = os.path.join(bins_dir, "baseline"), os.path.join(bins_dir, "current")
    logdir = tempfile.mkdtemp(prefix="rtg-bench-catalog-")
    print(f"logs in {logdir}", flush=True)
    if not args.no_build:
        tree = tempfile.mkdtemp(prefix="rtg-baseline-")
        subprocess.run(["git", "worktree", "add", "--detach", tree, args.baseline], cwd=ROOT, check=True)
        try:
            os.makedirs(os.path.join(tree, "examples"), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, "bench", "catalog", "validate.rs"),
                         os.path.join(tree, "examples", "validate_bench.rs"))
            build(tree, target, base_bins, ["realtime-gateway"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
        build(ROOT, target, cur_bins, ["realtime-gateway", "rtg-loadgen"])
    loadgen = os.path.join(cur_bins, "rtg-loadgen")

    rates = {"baseline": [], "current": []}
    for i in range(args.rounds):
        for label, d in (("baseline", base_bins), ("current", cur_bins)):
            r = publish_rate(os.path.join(d, "realtime-gateway"), loadgen, args.count,
                             args.concurrency, logdir, f"{label}-{i}")
            rates[label].append(r)
            print(f"round {i + 1} {label}: {r:.0f} publishes/s", flush=True)
    valid = {label: validation(os.path.join(d, "validate_bench"), args.iterations)
             for label, d in (("baseline", base_bins), ("current", cur_bins))}

    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {
        "type": "catalog-validation",
        "baseline": args.baseline,
        "count": args.count,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "iterations": args.iterations,
        "publishes_per_sec": {k: {"runs": v, "median": statistics.median(v)} for k, v in rates.items()},
        "validate_ns": valid,
    }
    out = os.path.join(ROOT, "bench", "results", f"catalog-validation-{stamp}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    b, c = result["publishes_per_sec"]["baseline"]["median"], result["publishes_per_sec"]["current"]["median"]
    print(f"\nPOST /v1/publish, embedded bus, {args.count} events x {args.rounds} rounds, {args.concurrency} in flight")
    print(f"| build | publishes/s (median) |\n|---|---|\n| baseline {args.baseline} | {b:.0f} |\n| current | {c:.0f} ({(c / b - 1) * 100:+.1f} %) |")
    print("\nPublishRules::validate per event type (ns)\n| event | baseline | current |\n|---|---|---|")
    cur = {e["event"]: e["ns_per_validate"] for e in valid["current"]["events"]}
    for e in valid["baseline"]["events"]:
        print(f"| {e['event']} | {e['ns_per_validate']:.0f} | {cur[e['event']]:.0f} |")
    print(f"| mean | {valid['baseline']['mean_ns']:.0f} | {valid['current']['mean_ns']:.0f} |")
    print(f"\nwritten {out}")
    shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
