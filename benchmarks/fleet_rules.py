"""Benchmark: samples touched and evaluation time of the long-window alerts and panels, old vs new, at two sizes.

    python benchmarks/fleet_rules.py [--nodes 4 8] [--hpus 8] [--days 8] [--step 60]

For each size: generate N nodes x H HPUs x D days (tests/support/fleetdata.py), backfill it into a real Prometheus,
evaluate the recording rules over it (tests/support/backfill.py), then run every expression of the equivalence test
as it was (raw counters) and as it is (recorded 5-minute increments) at the end of the data with `stats=all`:
samples touched (data.stats.samples.totalQueryableSamples) and server time. Then the recording rules' own cost per
evaluation. Last, an EXTRAPOLATION to 1,000 nodes x 30 days at 30 s scrapes: linear in nodes (fitted on the two
sizes), in the window's days beyond the data span, and in scrapes per minute for raw samples. Prints figures,
asserts nothing. Targets (issue 14): every rule and default-range panel under 1 M samples at 1,000 nodes x 30 days,
the monthly budget alert >= 50x fewer samples than before. Data lives in a temporary directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dashboards  # noqa: E402
from alerts import rules  # noqa: E402
from dashboards import queries  # noqa: E402
from exporter import catalogue  # noqa: E402
from tests.support import backfill, fleetdata  # noqa: E402
from tests.test_fleet_equivalence import _comparisons, _passes, _thresholds  # noqa: E402

TARGET_NODES, TARGET_DAYS, TARGET_STEP = 1000, 30, 30
WINDOW = re.compile(r"\[(\d+)([smhd])\]")
UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def longest_window_s(expr: str) -> int:
    return max((int(n) * UNIT[u] for n, u in WINDOW.findall(expr)), default=0)


def measure(prom: str, expr: str, at: int, repeat: int = 3) -> tuple[int, float]:
    """(samples touched, median server seconds) of an instant query."""
    samples, times = 0, []
    for _ in range(repeat):
        _, stats = backfill.instant(prom, expr, at, stats=True)
        samples = int(stats["samples"]["totalQueryableSamples"])
        times.append(float(stats["timings"]["execTotalTime"]))
    return samples, sorted(times)[len(times) // 2]


def _range_s(text: str) -> int:
    """Seconds of a Grafana time setting: now-6h, 30d, now/d (a day at most), now/M (a month at most)."""
    if text in ("now/d",):
        return 86400
    if text in ("now/M",):
        return 30 * 86400
    m = re.match(r"^(?:now-)?(\d+)([smhd])$", text)
    if not m:
        raise ValueError(f"unknown time setting {text!r}")
    return int(m.group(1)) * UNIT[m.group(2)]


def panel_targets() -> list[tuple[str, str, int, bool, bool]]:
    """(board/panel ref, expr, default range seconds, instant, reads raw series) of every dashboard target."""
    return [t[:5] for t in _panel_targets()]


def _panel_targets() -> list[tuple[str, str, int, bool, bool, int]]:
    """panel_targets() and each panel's min interval in seconds (Grafana's `interval`, 15 s when unset)."""
    out = []
    for board in dashboards.boards():
        default = _range_s(board.json["time"]["from"])
        panels = {p["id"]: p for p in board.json["panels"]}
        for t in queries.panel_targets(board):
            rng = _range_s(panels[t.panel_id].get("timeFrom", "")) if panels[t.panel_id].get("timeFrom") else default
            raw = bool(queries.metric_names(t.expr) - set(catalogue.RECORDED))
            interval = panels[t.panel_id].get("interval")
            out.append((f"{board.uid}/{t.panel_title}/{t.ref}", t.expr, rng, t.instant, raw,
                        _range_s(interval) if interval else 15))
    return out


def measure_panel(prom: str, expr: str, rng: int, instant: bool, at: int, node: str, min_step: int = 15) -> int:
    """Samples a panel target touches at its default range, the way Grafana asks (~1,000 points for graphs, never
    finer than the panel's min interval)."""
    e = queries.expand(expr, {"node": node}, range_s=rng, rate_interval="1m")
    if instant:
        return int(backfill.instant(prom, e, at, stats=True)[1]["samples"]["totalQueryableSamples"])
    step = max(min_step, rng // 1000)
    r = backfill.requests.post(prom + "/api/v1/query_range", data={"query": e, "start": at - rng, "end": at,
                                                                  "step": step, "stats": "all"}, timeout=900)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"{e}: {body.get('error')}")
    return int(body["data"]["stats"]["samples"]["totalQueryableSamples"])


def _rule_passes(groups: dict) -> list[list[dict]]:
    """The gaudi-exporter.rules group in two passes: rules over raw series, then rules over those."""
    g = next(g for g in groups["prometheus_rules.yaml"] if g["name"] != rules.INCREMENTS_GROUP)
    first = [r for r in g["rules"] if not queries.metric_names(r["expr"]) & set(catalogue.RECORDED)]
    second = [r for r in g["rules"] if r not in first]
    return [[{"name": f"{g['name']}.{i}", "interval": "1m", "rules": rs}] for i, rs in enumerate((first, second)) if rs]


def run_size(root: Path, nodes: int, hpus: int, days: float, step: int) -> dict:
    t0 = time.monotonic()
    data = fleetdata.generate(root / "om", nodes=nodes, hpus=hpus, days=days, step=step, clusters=("bench",),
                              all_series=True)
    db = root / "data"
    backfill.import_openmetrics(data.files, db)
    shutil.rmtree(root / "om")
    groups = rules.groups(_thresholds())
    backfill.record_passes(db, _passes(groups), data.start, data.end, root / "recorded")
    # the other recording rules (rates, ratios) over the last 7 hours only: what the default-range panels read
    backfill.record_passes(db, _rule_passes(groups), data.end - 7 * 3600, data.end, root / "rules")
    built = time.monotonic() - t0
    at = data.end - 150
    result: dict = {"nodes": nodes, "span_s": data.end - data.start, "series": data.series, "built_s": built,
                    "pairs": {}, "rules": {}}
    with backfill.serve(db) as prom:
        for name, (old, new) in _comparisons(groups).items():
            result["pairs"][name] = (measure(prom, old, at), measure(prom, new, at), longest_window_s(old))
        for g in groups["prometheus_rules.yaml"]:
            for r in g["rules"]:
                result["rules"][r["record"]] = measure(prom, r["expr"], at)
        result["alerts"] = {r["alert"]: (measure(prom, r["expr"], at), longest_window_s(r["expr"]))
                            for g in groups["prometheus_alerts.yaml"] for r in g["rules"]}
        # the fleet board starts on one node (its node variable has no "All"): the first, as Grafana picks
        node = sorted(x["metric"]["instance"] for x in backfill.instant(prom, "group by (instance) (up)", at)[0])[0]
        result["panels"] = {ref: measure_panel(prom, expr, rng, inst, at, node if ref.startswith("gaudi-fleet")
                                               else ".*", min_step)
                            for ref, expr, rng, inst, _, min_step in _panel_targets()}
    shutil.rmtree(db)
    return result


def extrapolate(a: dict, b: dict, pick, window_s: int, raw: bool, step: int) -> float:
    """Samples at TARGET_NODES x TARGET_DAYS: linear fit over nodes, then window days and scrape rate."""
    (na, sa), (nb, sb) = (a["nodes"], pick(a)), (b["nodes"], pick(b))
    slope = (sb - sa) / (nb - na) if nb != na else sb / nb
    at_nodes = sb + slope * (TARGET_NODES - nb)
    span = min(a["span_s"], b["span_s"])
    days = min(window_s, TARGET_DAYS * 86400) / min(window_s, span) if window_s else 1.0
    return at_nodes * days * (step / TARGET_STEP if raw else 1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs=2, default=[4, 8], help="two fleet sizes (nodes), default 4 8")
    ap.add_argument("--hpus", type=int, default=8)
    ap.add_argument("--days", type=float, default=8.0, help="days of data (the 30d windows see what there is)")
    ap.add_argument("--step", type=int, default=60, help="scrape interval of the generated data, seconds")
    args = ap.parse_args(argv)
    sizes = []
    with tempfile.TemporaryDirectory(prefix="fleet-rules-") as tmp:
        for n in args.nodes:
            print(f"building {n} nodes x {args.hpus} HPUs x {args.days:g} d at {args.step}s ...", flush=True)
            sizes.append(run_size(Path(tmp) / f"n{n}", n, args.hpus, args.days, args.step))
            print(f"  {sizes[-1]['series']} series over the span ({sizes[-1]['series'] / n:.0f} per node), "
                  f"built in {sizes[-1]['built_s']:.0f}s", flush=True)
    a, b = sizes
    print(f"\nsamples touched / server ms, old (raw counters) vs new (recorded increments); data {args.days:g} d "
          f"at {args.step}s, so 30d windows see {args.days:g} d")
    head = f"{'expression':40s}" + "".join(f"{'old ' + str(s['nodes']):>16s}{'new ' + str(s['nodes']):>16s}"
                                          for s in sizes) + f"{'fewer':>8s}"
    print(head)
    for name in a["pairs"]:
        cells = ""
        for s in sizes:
            (so, to), (sn, tn), _ = s["pairs"][name]
            cells += f"{so:>10d}/{to * 1000:5.0f}{sn:>10d}/{tn * 1000:5.0f}"
        (so, _), (sn, _), _ = b["pairs"][name]
        print(f"{name:40s}{cells}{so / max(sn, 1):>7.0f}x")
    print("\nrecording rules (one evaluation)")
    for rec in a["rules"]:
        print(f"{rec:48s}" + "".join(f"{s['rules'][rec][0]:>10d}/{s['rules'][rec][1] * 1000:5.1f}ms" for s in sizes))
    print(f"\nEXTRAPOLATION to {TARGET_NODES} nodes x {TARGET_DAYS} d at {TARGET_STEP}s scrapes (linear in nodes, "
          "window days and scrapes; not measured):")
    print(f"{'expression':40s}{'old':>14s}{'new':>14s}{'fewer':>8s}  target < 1M")
    for name in a["pairs"]:
        w = b["pairs"][name][2]
        old = extrapolate(a, b, lambda s, n=name: s["pairs"][n][0][0], w, True, args.step)
        new = extrapolate(a, b, lambda s, n=name: s["pairs"][n][1][0], w, False, args.step)
        print(f"{name:40s}{old:>14,.0f}{new:>14,.0f}{old / max(new, 1):>7.0f}x  {'ok' if new < 1e6 else 'OVER'}")
    for rec in a["rules"]:
        w = longest_window_s(next(r["expr"] for g in rules.groups(_thresholds())["prometheus_rules.yaml"]
                                  for r in g["rules"] if r["record"] == rec))
        raw = bool(queries.metric_names(next(r["expr"] for g in rules.groups(_thresholds())["prometheus_rules.yaml"]
                                             for r in g["rules"] if r["record"] == rec)) - set(catalogue.RECORDED))
        est = extrapolate(a, b, lambda s, r=rec: s["rules"][r][0], w, raw, args.step)
        print(f"{rec:48s}{'':>6s}{est:>14,.0f}{'':>8s}  {'ok' if est < 1e6 else 'OVER'}")
    print("\nalerts (one evaluation at the end of the data; samples at the two sizes, then extrapolated)")
    for name in a["alerts"]:
        (sa, _), w = a["alerts"][name]
        (sb, _), _ = b["alerts"][name]
        exprs = {r["alert"]: r["expr"] for g in rules.groups(_thresholds())["prometheus_alerts.yaml"]
                 for r in g["rules"]}
        raw = bool(queries.metric_names(exprs[name]) - set(catalogue.RECORDED))
        est = extrapolate(a, b, lambda s, n=name: s["alerts"][n][0][0], w, raw, args.step)
        print(f"{name:48s}{sa:>10d}{sb:>10d}{est:>14,.0f}  {'ok' if est < 1e6 else 'OVER'}")
    print(f"\ndashboard targets at their default range (fleet board: one node), measured at {a['nodes']} and "
          f"{b['nodes']} nodes, EXTRAPOLATED to {TARGET_NODES} nodes:")
    over = missing = 0
    for ref, _, rng, _, raw in panel_targets():
        est = extrapolate(a, b, lambda s, r=ref: s["panels"][r], rng, raw, args.step)
        if ref.startswith("gaudi-fleet"):  # scoped to one node: does not grow with the fleet
            est = b["panels"][ref] * (min(rng, TARGET_DAYS * 86400) / min(rng, b["span_s"])) * \
                (args.step / TARGET_STEP if raw else 1.0)
        if not b["panels"][ref]:
            missing += 1
            print(f"{ref:70s}{'n/a: reads series the generator does not write (see fleetdata.py)':>36s}")
            continue
        over += est >= 1e6
        print(f"{ref:70s}{a['panels'][ref]:>10d}{b['panels'][ref]:>10d}{est:>14,.0f}  {'ok' if est < 1e6 else 'OVER'}")
    print(f"{over} of {len(a['panels']) - missing} measured targets over 1M samples at {TARGET_NODES} nodes "
          f"(extrapolated); {missing} not measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
