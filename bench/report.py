#!/usr/bin/env python3
"""Turns the newest benchmark results into the markdown table for the README.

    python3 bench/report.py                    # print the table
    python3 bench/report.py --update README.md # replace the block between the markers
                                               # <!-- bench:begin --> and <!-- bench:end -->

For every scenario it takes the newest run in which both the gateway and the baseline were
measured (so every ratio compares numbers taken in the same run, on the same machine); a
scenario measured for one target only shows a dash for the other. The main table is of clients
on WebSocket; when idle or fan-out were also measured with clients on long-polling or polling
then upgrade (`scenario.py --transport`), a second table puts each transport's gateway and
baseline side by side. Nothing here is typed by hand: every number comes from
bench/results/*.json. Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenario import FULL  # noqa: E402  (the full sizes, one definition)

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
# Client transports in the order they are listed (older results, without one, are WebSocket).
TRANSPORTS = ["websocket", "polling", "upgrade"]
TRANSPORT_LABELS = {
    "websocket": "WebSocket",
    "polling": "polling only",
    "upgrade": "polling → WebSocket",
}


def load(results: Path) -> list[dict]:
    docs = []
    for f in sorted(results.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "scenario" in doc:
            doc["_file"] = f.name
            docs.append(doc)
    return docs


def transport_of(doc: dict) -> str:
    return doc.get("transport", "websocket")


def runs_of(docs: list[dict], scenario: str, transport: str) -> dict[str, dict[str, dict]]:
    """{run: {target: doc}} of one scenario and client transport, on one Redis server."""
    runs: dict[str, dict[str, dict]] = {}
    for d in docs:
        # The table compares on one Redis server; Redis Cluster runs are reported apart.
        if (d["scenario"] == scenario and d.get("redis", "single") == "single"
                and transport_of(d) == transport):
            runs.setdefault(d.get("run", ""), {})[d.get("target", "")] = d
    return runs


def rank(doc: dict) -> int:
    """0: a --quick run (it only proves the harness); 1: full sizes changed by flags (fewer
    rates, other counts); 2: the full sizes of `scenario.py` as they are now."""
    if doc.get("quick"):
        return 0
    params = doc.get("params", {})
    keys = [k for k in FULL if k.startswith(doc["scenario"] + "_")]
    return 2 if all(params.get(k) == FULL[k] for k in keys) else 1


def complete(runs: dict[str, dict[str, dict]]) -> list[str]:
    """Runs that measured both targets, best last: by rank (full default sizes over changed
    sizes over quick ones, so a smaller run never hides a full one), then by date."""
    both = [r for r in runs if {"gateway", "baseline"} <= set(runs[r])]
    return sorted(both, key=lambda r: (min(rank(d) for d in runs[r].values()), r))


def pick(docs: list[dict], scenario: str, transport: str = "websocket",
         run: str | None = None) -> tuple[dict | None, dict | None]:
    """(gateway, baseline) of `run` if it has both, else of the newest run that has both (a
    full-size one before a quick one), else the newest of each."""
    runs = runs_of(docs, scenario, transport)
    both = complete(runs)
    if run in both:
        return runs[run]["gateway"], runs[run]["baseline"]
    if both:
        r = runs[both[-1]]
        return r["gateway"], r["baseline"]
    newest = lambda t: next((runs[r][t] for r in sorted(runs, reverse=True) if t in runs[r]), None)  # noqa: E731
    return newest("gateway"), newest("baseline")


def get(doc: dict | None, *path, default=None):
    cur = doc["result"] if doc else None
    for p in path:
        if cur is None:
            return default
        if isinstance(p, int):
            cur = cur[p] if isinstance(cur, list) and len(cur) > p else None
        else:
            cur = cur.get(p) if isinstance(cur, dict) else None
    return default if cur is None else cur


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def ratio(g, b) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (g, b))
    if not numbers or b == 0:
        return "—"
    return f"{g / b:.2f}×"


class Table:
    def __init__(self):
        self.rows: list[str] = []

    def row(self, scenario: str, metric: str, better: str, g, b, digits: int = 1) -> None:
        arrow = {"higher": "↑", "lower": "↓", "": ""}[better]
        label = f"{metric} {arrow}".strip()
        self.rows.append(f"| {scenario} | {label} | {fmt(g, digits)} | {fmt(b, digits)} | {ratio(g, b)} |")


def kib(v):
    return None if v is None else v / 1024


FLOOR_COLD = 9_000


def newest_floor(docs: list[dict], pairs: int):
    """CPU per loopback write over `pairs` connections from the newest floor run, if measured."""
    floors = [d for d in docs if d["scenario"] == "floor"]
    if not floors:
        return None
    newest = max(floors, key=lambda d: d.get("run", ""))
    shape = next((s for s in newest["result"].get("shapes", []) if s.get("pairs") == pairs), None)
    return shape and shape["write_cpu_us"]


def achieved(d):
    """Deliveries per second actually made at the highest zero-loss step (older results: offered)."""
    if d is None:
        return None
    v = get(d, "max_zero_loss_per_sec")
    return v if v is not None else get(d, "max_zero_loss_offered_per_sec")


def cpu_at_30k(d):
    """Server CPU per delivery (µs) of the fan-out step at 30k deliveries/s."""
    steps = get(d, "steps", default=[]) + [get(d, "at_30k")]
    s = next((s for s in steps if s and abs(s["offered_per_sec"] - 30_000) < 1), None)
    return s and s["server_cpu_us_per_delivery"]


def cpu_lowest(d):
    """Server CPU per delivery (µs) of the fan-out's first (lowest-rate) step."""
    steps = get(d, "steps", default=[])
    return steps[0]["server_cpu_us_per_delivery"] if steps else None


def transport_table(docs: list[dict]) -> list[str]:
    """Idle and fan-out, gateway against baseline for each client transport measured, the
    transports of one metric next to each other, all from one run where possible (the newest
    run, full sizes first, that measured a transport other than WebSocket on both targets).
    Empty when only WebSocket was measured."""
    present = {transport_of(d) for d in docs if d["scenario"] in ("idle", "fanout")}
    order = [tr for tr in TRANSPORTS if tr in present]
    if order == ["websocket"] or not order:
        return []
    rows: list[str] = []
    used: list[dict] = []

    def picked(scenario: str) -> dict[str, tuple[dict | None, dict | None]]:
        ref = None
        for tr in order:
            if tr != "websocket":
                runs = runs_of(docs, scenario, tr)
                c = complete(runs)
                if c:
                    key = (min(rank(d) for d in runs[c[-1]].values()), c[-1])
                    ref = key if ref is None or key > ref else ref
        return {tr: pick(docs, scenario, tr, ref and ref[1]) for tr in order}

    def group(pairs, metric: str, better: str, value, digits: int = 1) -> None:
        arrow = {"higher": "↑", "lower": "↓", "": ""}[better]
        first = True
        for tr in order:
            g, b = pairs[tr]
            if not (g or b):
                continue
            used.extend(d for d in (g, b) if d and d not in used)
            vg, vb = value(g), value(b)
            label = f"{metric} {arrow}".strip() if first else ""
            first = False
            rows.append(f"| {label} | {TRANSPORT_LABELS[tr]} | {fmt(vg, digits)} | {fmt(vb, digits)} "
                        f"| {ratio(vg, vb)} |")

    def size_entry(d, n):
        return next((s for s in get(d, "sizes", default=[]) if s["connections"] == n), None)

    idle = picked("idle")
    sizes = sorted({s["connections"] for pair in idle.values() for d in pair if d
                    for s in get(d, "sizes", default=[])})
    for n in sizes:
        group(idle, f"idle: memory per connection, {n:,} held (KiB)", "lower",
              lambda d, n=n: kib(size_entry(d, n) and size_entry(d, n)["bytes_per_connection"]))
        group(idle, f"idle: connections held of {n:,}", "higher",
              lambda d, n=n: size_entry(d, n) and size_entry(d, n)["held"], 0)
        group(idle, f"idle: server CPU per connect, {n:,} (µs)", "lower",
              lambda d, n=n: size_entry(d, n) and size_entry(d, n)["cpu_us_per_connect"], 0)
    fan = picked("fanout")
    fan_docs = [d for pair in fan.values() for d in pair if d]
    if fan_docs:
        params = fan_docs[0].get("params", {})
        n, stop = params.get("fanout_connections"), params.get("stop_p99_ms", 1000)
        low = next((get(d, "steps")[0].get("offered_per_sec") for d in fan_docs if get(d, "steps")), None)

        def f(metric, better, value, digits=1):
            group(fan, f"fan-out, {fmt(n)}-member room: {metric}", better, value, digits)

        def at_30k(d, key):
            s = get(d, "at_30k")
            return s and s["deliveries"][key]

        f("connections held", "higher", lambda d: get(d, "connections", "held"), 0)
        f(f"server CPU per delivery at the lowest rate, {fmt(low)}/s (µs)", "lower", cpu_lowest, 2)
        f("server CPU per delivery at 30k/s (µs)", "lower", cpu_at_30k, 2)
        f("p99 at 30k deliveries/s (ms)", "lower", lambda d: get(d, "p99_ms_at_30k"))
        f("lost or doubled at 30k deliveries/s", "lower",
          lambda d: at_30k(d, "lost") is not None and at_30k(d, "lost") + at_30k(d, "duplicated"), 0)
        f(f"highest zero-loss rate with p99 ≤ {fmt(stop, 0)} ms, of the rates run (deliveries/s)",
          "higher", achieved, 0)
    if not rows:
        return []
    runs = sorted({d.get("run", "") for d in used if d.get("run")})
    quick = any(d.get("quick") for d in used)
    return [
        "",
        "By client transport (WebSocket: `transports: [\"websocket\"]`; polling only: "
        "`transports: [\"polling\"]`; polling → WebSocket: the stock client's default, upgraded "
        "after the handshake). Each transport's gateway and baseline come from the same run; "
        f"measured {runs[0] if runs else '?'}" + (f" to {runs[-1]}" if len(runs) > 1 else "")
        + (". **Quick (small) sizes.**" if quick else "."),
        "",
        "| metric | client transport | gateway | baseline | ratio |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]


def build(docs: list[dict]) -> str:
    t = Table()
    used: list[dict] = []

    g, b = pick(docs, "idle")
    used += [d for d in (g, b) if d]
    sizes = sorted({s["connections"] for d in (g, b) if d for s in get(d, "sizes", default=[])})
    for n in sizes:
        sg = next((s for s in get(g, "sizes", default=[]) if s["connections"] == n), None)
        sb = next((s for s in get(b, "sizes", default=[]) if s["connections"] == n), None)
        t.row("idle", f"memory per connection, {n:,} held (KiB)", "lower",
              kib(sg and sg["bytes_per_connection"]), kib(sb and sb["bytes_per_connection"]))
        t.row("idle", f"connections held of {n:,}", "higher", sg and sg["held"], sb and sb["held"])
        t.row("idle", f"server CPU per connect, {n:,} (µs)", "lower",
              sg and sg["cpu_us_per_connect"], sb and sb["cpu_us_per_connect"], 0)

    g, b = pick(docs, "fanout")
    used += [d for d in (g, b) if d]
    n = (g or b or {}).get("params", {}).get("fanout_connections")
    small = (g or b or {}).get("params", {}).get("small_room")
    limit = (g or b or {}).get("params", {}).get("p99_limit_ms", 100)
    stop = (g or b or {}).get("params", {}).get("stop_p99_ms", 1000)
    if g or b:
        t.row("fan-out", f"highest zero-loss rate with p99 ≤ {fmt(limit, 0)} ms, {fmt(n)}-member room (deliveries/s)",
              "higher", get(g, "max_sustained_per_sec"), get(b, "max_sustained_per_sec"), 0)
        t.row("fan-out", "p99 at that rate (ms)", "lower",
              get(g, "max_sustained_p99_ms"), get(b, "max_sustained_p99_ms"))
        t.row("fan-out", f"highest zero-loss rate with p99 ≤ {fmt(stop, 0)} ms, {fmt(n)}-member room (deliveries/s)", "higher",
              achieved(g), achieved(b), 0)
        t.row("fan-out", "p99 at that rate (ms)", "lower",
              get(g, "max_zero_loss_p99_ms"), get(b, "max_zero_loss_p99_ms"))
        t.row("fan-out", f"p99 at 30k deliveries/s, {fmt(n)}-member room (ms)", "lower",
              get(g, "p99_ms_at_30k"), get(b, "p99_ms_at_30k"))
        t.row("fan-out", f"p99 at 30k deliveries/s, {fmt(small)}-member room (ms)", "lower",
              get(g, "small_room_p99_ms_at_30k"), get(b, "small_room_p99_ms_at_30k"))

        t.row("fan-out", "server CPU per delivery at 30k/s (µs)", "lower", cpu_at_30k(g), cpu_at_30k(b), 2)

        low = (get(g, "steps", default=[]) or get(b, "steps", default=[]) or [{}])[0].get("offered_per_sec")
        t.row("fan-out", f"server CPU per delivery at the lowest rate, {fmt(low)}/s (µs)", "lower",
              cpu_lowest(g), cpu_lowest(b), 2)
        cold = newest_floor(docs, FLOOR_COLD)
        if cold:
            over = lambda d: cpu_lowest(d) and cpu_lowest(d) / cold  # noqa: E731
            t.row("fan-out", f"… ÷ loopback write floor over {fmt(FLOOR_COLD)} connections", "lower",
                  over(g), over(b), 2)

    g, b = pick(docs, "rooms")
    used += [d for d in (g, b) if d]
    if g or b:
        n = (g or b)["params"].get("rooms_connections")
        t.row("many rooms", f"highest zero-loss rate to random users of {fmt(n)} (deliveries/s)", "higher",
              get(g, "max_sustained_per_sec"), get(b, "max_sustained_per_sec"), 0)
        t.row("many rooms", "p99 at that rate (ms)", "lower",
              get(g, "max_sustained_p99_ms"), get(b, "max_sustained_p99_ms"))
        t.row("many rooms", "highest zero-loss rate with p99 ≤ 1 s (deliveries/s)", "higher",
              achieved(g), achieved(b), 0)

    g, b = pick(docs, "storm")
    used += [d for d in (g, b) if d]
    if g or b:
        t.row("reconnect storm", "clients moved after SIGKILL of one of two servers", "",
              get(g, "reconnected"), get(b, "reconnected"), 0)
        t.row("reconnect storm", "time until all are back and authenticated (s)", "lower",
              get(g, "recovery_secs"), get(b, "recovery_secs"), 2)
        t.row("reconnect storm", "reconnects per second", "higher",
              get(g, "reconnects_per_sec"), get(b, "reconnects_per_sec"), 0)
        t.row("reconnect storm", "reconnects per CPU-second of the survivor", "higher",
              get(g, "reconnects_per_survivor_cpu_sec"), get(b, "reconnects_per_survivor_cpu_sec"), 0)
        t.row("reconnect storm", "CPU-seconds of generators and Redis meanwhile (same 2 cores)", "",
              get(g, "generators_and_redis_cpu_s"), get(b, "generators_and_redis_cpu_s"), 2)
        t.row("reconnect storm", "all back", "", get(g, "all_back"), get(b, "all_back"))

    g, b = pick(docs, "scale")
    used += [d for d in (g, b) if d]
    if g or b:
        p = (g or b)["params"]
        label = f"{fmt(p.get('scale_connections'))} connections on {p.get('scale_servers')} processes"
        t.row("scale", f"{label}: held", "higher",
              get(g, "connections", "held"), get(b, "connections", "held"), 0)
        t.row("scale", "connect handshake p99 while ramping (ms)", "lower",
              get(g, "connections", "handshake_ms", "p99"), get(b, "connections", "handshake_ms", "p99"), 0)
        t.row("scale", f"deliveries/s offered ({fmt(p.get('scale_rate'))} event/s to everyone)", "",
              get(g, "step", "offered_per_sec"), get(b, "step", "offered_per_sec"), 0)
        t.row("scale", "lost deliveries", "lower", get(g, "lost"), get(b, "lost"), 0)
        t.row("scale", "p99 (ms)", "lower", get(g, "p99_ms"), get(b, "p99_ms"))
        t.row("scale", "memory per connection (KiB)", "lower",
              kib(get(g, "bytes_per_connection")), kib(get(b, "bytes_per_connection")))

    floors = [d for d in docs if d["scenario"] == "floor"]
    floor = max(floors, key=lambda d: d.get("run", "")) if floors else None
    if floor:
        used.append(floor)
        shapes = floor["result"].get("shapes") or [floor["result"]]
        for s in shapes:
            t.rows.append(f"| machine | loopback TCP write of a {s['frame_bytes']}-byte frame over "
                          f"{fmt(s.get('pairs'))} connections (µs CPU) | {fmt(s['write_cpu_us'], 2)} | | |")

    cg = [d for d in docs if d["scenario"] == "callgrind"]
    if cg:
        newest = max(cg, key=lambda d: d["_file"])
        t.rows.append(f"| callgrind | instructions per delivery ({newest['clients']} clients × "
                      f"{newest['events']} events) | {fmt(newest['ir_per_delivery'], 0)} | | |")

    by_transport = transport_table(docs)
    if not t.rows and not by_transport:
        return "No results yet: run `python3 bench/scenario.py all --target both`.\n"
    ref = next((d for d in used if d.get("machine")), None)
    m = ref["machine"] if ref else {}
    bl = next((d.get("versions", {}) for d in used if d.get("target") == "baseline"), {})
    runs = sorted({d.get("run", "") for d in used if d.get("run")})
    quick = any(d.get("quick") for d in used)
    head = [
        f"Measured {runs[0] if runs else '?'}"
        + (f" to {runs[-1]}" if len(runs) > 1 else "")
        + f" on {m.get('cpu_model', '?')}, {m.get('cpus', '?')} cores, {m.get('mem_gib', '?')} GiB, "
        f"Linux {m.get('kernel', '?')}; gateway {m.get('gateway_commit', '?')}; baseline "
        + ", ".join(f"{k} {v}" for k, v in bl.items())
        + f" on Node {m.get('node', '?')} (one process per core); {m.get('redis', '').split(' sha')[0]}."
        + (" **Quick (small) sizes.**" if quick else ""),
        "",
        "↑: higher is better, ↓: lower is better; the ratio is gateway ÷ baseline from the same run. "
        "Produced by `bench/report.py` from `bench/results/`.",
        "",
        "| scenario | metric | gateway | baseline | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    return "\n".join(head + t.rows + by_transport) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--update", type=Path, help=f"file whose {BEGIN} ... {END} block is replaced")
    opts = ap.parse_args()
    table = build(load(opts.results))
    if not opts.update:
        sys.stdout.write(table)
        return 0
    text = opts.update.read_text()
    if BEGIN not in text or END not in text:
        print(f"{opts.update} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    opts.update.write_text(f"{before}{BEGIN}\n{table}{END}{after}")
    print(f"updated {opts.update}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
