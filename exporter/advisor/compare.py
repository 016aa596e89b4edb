"""Shared engine of `advise batch-size` and `advise precision`: measured cost per sample of each setting."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from exporter.advisor.prom import PromError, Prometheus, iso, parse_duration, parse_time
from exporter.advisor.runs import SETTINGS, AdvisorError, Phase, fetch, join_cost, price_phases, split_phases
from exporter.argparser import Parser

DEFAULT_MIN_POINTS = 10


def build_parser(prog: str, label: str) -> Parser:
    p = Parser(
        prog=prog,
        description=f"Compare the measured cost per sample of each {label} a job ran with, from the training "
                    "metrics and the node exporter's cost counter in Prometheus.")
    p.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://prometheus:9090")
    p.add_argument("--job", required=True, help="training job name (the job label of gaudi_training_info)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--samples", type=float, help="project the cost of this many samples")
    size.add_argument("--epochs", type=float, help="project the cost of this many epochs (needs --dataset-size)")
    p.add_argument("--dataset-size", type=float, help="samples per epoch")
    p.add_argument("--range", default="1h", help="how far back to look (default 1h)")
    p.add_argument("--end", default="now", help="end of the window (now, now-1h, unix time, RFC 3339)")
    p.add_argument("--min-points", type=int, default=DEFAULT_MIN_POINTS,
                   help=f"scrape intervals a setting needs to be compared (default {DEFAULT_MIN_POINTS})")
    p.add_argument("--job-label", default="auto", help="label holding the job name: job, exported_job or auto")
    p.add_argument("--join", default="auto",
                   help="how training targets find their node's cost: node, instance-host, another label, "
                        "or auto (node when both sides carry it, else instance-host)")
    p.add_argument("--cost-selector", default=None,
                   help='price the job with these node cost series instead of joining, e.g. {instance="n1:9654"}')
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _projection(a: argparse.Namespace) -> float | None:
    if a.epochs is not None:
        if not a.dataset_size:
            raise ValueError("--epochs needs --dataset-size (samples per epoch)")
        return a.epochs * a.dataset_size
    if a.dataset_size is not None and a.samples is None:
        raise ValueError("--dataset-size is only used with --epochs")
    return a.samples


def _fmt_usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3e}" if abs(x) < 0.01 else f"{x:,.4f}"


def _fmt_hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def _sort_key(key: str) -> tuple:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


Held = tuple[tuple[str, str], ...]  # the other settings, held fixed within one comparison


def analyse(prom: Prometheus, job: str, label: str, start: float, end: float, *, job_label: str = "auto",
            join: str = "auto", cost_selector: str | None = None) -> tuple[dict[Held, dict[str, Phase]], str, str]:
    """Phases of the job grouped by the settings other than ``label``: {held fixed: {value of label: phase}}.

    A comparison changes one setting only: runs of batch size 8 in bf16 and 32 in fp32 say nothing about batch
    size, so each set of other settings (precision, model) is compared on its own, never pooled."""
    data = fetch(prom, job, start, end, job_label=job_label, cost_selector=cost_selector)
    phases = split_phases(data.samples, data.info, None)  # one phase per full set of settings
    if not phases:
        raise AdvisorError(f"job {job!r}: no two consecutive scrapes with the same settings in the window; "
                           "let it run longer or widen --range")
    targets = sorted({t for ph in phases.values() for t in ph.targets})
    j = join_cost(targets, data.cost, join, explicit=data.explicit_cost)
    price_phases(phases, j)
    groups: dict[Held, dict[str, Phase]] = {}
    for ph in phases.values():
        (settings,) = ph.settings
        held = tuple((k, v) for k, v in settings if k != label)
        groups.setdefault(held, {})[dict(settings)[label]] = ph
    return groups, data.job_label, j.describe()


def _held_text(held: Held) -> str:
    return ", ".join(f"{k}={v or '(none)'}" for k, v in held)


def run(argv: list[str], *, label: str, prog: str, out: TextIO | None = None, err: TextIO | None = None,
        now: float | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    a = build_parser(prog, label).parse_args(argv)
    try:
        n = _projection(a)
        end = parse_time(a.end, now if now is not None else time.time())
        start = end - parse_duration(a.range)
        if a.min_points < 2:
            raise ValueError("--min-points must be >= 2")
        prom = Prometheus(a.prometheus)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=err)
        return 2
    try:
        groups, job_label, joined = analyse(prom, a.job, label, start, end, job_label=a.job_label, join=a.join,
                                            cost_selector=a.cost_selector)
    except PromError as e:
        print(f"{prog}: error: {e}", file=err)
        return 1
    except AdvisorError as e:
        print(f"{prog}: cannot advise: {e}", file=err)
        return 2

    comparisons = []
    # the comparison with the most evidence first
    for held, phases in sorted(groups.items(), key=lambda g: (-sum(p.points for p in g[1].values()), g[0])):
        rows = []
        for key in sorted(phases, key=_sort_key):
            ph = phases[key]
            ok = ph.points >= a.min_points and ph.usd_per_sample is not None
            cps = ph.usd_per_sample
            rows.append({
                label: key, "points": ph.points, "samples": ph.samples, "seconds": ph.seconds,
                "samples_per_second": ph.samples_per_second,
                "usd_per_hour": None if ph.usd_per_second is None else ph.usd_per_second * 3600,
                "usd_per_sample": cps, "enough_data": ok,
                "projected_usd": cps * n if (n is not None and cps is not None) else None,
                "projected_seconds": n / ph.samples_per_second if (n and ph.samples_per_second > 0) else None,
            })
        eligible = [r for r in rows if r["enough_data"]]
        best = min(eligible, key=lambda r: r["usd_per_sample"]) if len(eligible) >= 2 else None
        comparisons.append({"held_fixed": dict(held), "rows": rows, "cheapest": best[label] if best else None})
    summary = {"job": a.job, "job_label": job_label, "compared": label, "window": [iso(start), iso(end)],
               "cost_join": joined, "min_points": a.min_points, "projected_samples": n,
               "comparisons": comparisons}
    if a.json:
        print(json.dumps(summary, indent=1), file=out)
    else:
        _print_table(summary, out)
    if all(c["cheapest"] is None for c in comparisons):
        short = [f"{r[label]} ({r['points']} intervals)" for c in comparisons for r in c["rows"]
                 if not r["enough_data"]]
        print(f"{prog}: cannot advise: no set of the other settings ({', '.join(k for k in SETTINGS if k != label)}) "
              f"has {label} values with >= {a.min_points} scrape intervals and a price; need 2 to compare. Too few "
              f"measurements: {', '.join(short) or 'none'}. Let each setting run longer, widen --range, or change "
              f"only {label} between runs.", file=err)
        return 2
    return 0


def _print_table(s: dict, out: TextIO) -> None:
    label = s["compared"]
    n = s["projected_samples"]
    print(f"job {s['job']} (label {s['job_label']}), window {s['window'][0]} .. {s['window'][1]}", file=out)
    print(f"cost: {s['cost_join']}; all figures measured from scraped series", file=out)
    for c in s["comparisons"]:
        held = _held_text(tuple(c["held_fixed"].items()))
        print(f"\ncompared: {label}, with the other settings held fixed: {held}", file=out)
        head = [label, "intervals", "samples", "seconds", "samples/s", "USD/hour", "USD/sample"]
        if n is not None:
            head += [f"USD for {n:,.0f}", "time"]
        lines = [head]
        for r in c["rows"]:
            cells = [r[label], str(r["points"]), f"{r['samples']:.0f}", f"{r['seconds']:.1f}",
                     f"{r['samples_per_second']:.2f}", _fmt_usd(r["usd_per_hour"]), _fmt_usd(r["usd_per_sample"])]
            if n is not None:
                cells += [_fmt_usd(r["projected_usd"]),
                          _fmt_hms(r["projected_seconds"]) if r["projected_seconds"] else "-"]
            if not r["enough_data"]:
                cells[1] += "*"
            lines.append(cells)
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        for row in lines:
            print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)), file=out)
        if any(not r["enough_data"] for r in c["rows"]):
            print(f"* fewer than {s['min_points']} scrape intervals (or no price): not compared", file=out)
        if c["cheapest"] is None:
            print(f"not compared: fewer than 2 {label} values with enough data ran with {held}", file=out)
            continue
        rows = {r[label]: r for r in c["rows"] if r["enough_data"]}
        best = rows[c["cheapest"]]
        worst = max(rows.values(), key=lambda r: r["usd_per_sample"])
        ratio = worst["usd_per_sample"] / best["usd_per_sample"]
        msg = (f"cheapest: {label}={c['cheapest']} at {_fmt_usd(best['usd_per_sample'])} USD/sample "
               f"({ratio:.2f}x cheaper than {label}={worst[label]}), with {held} held fixed")
        if n is not None:
            msg += f"; {n:,.0f} samples would cost {_fmt_usd(best['projected_usd'])} USD"
        print(msg, file=out)
