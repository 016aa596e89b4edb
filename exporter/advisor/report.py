"""`gaudi-exporter report run`: what a training run cost, where the money went, as markdown and HTML.

All figures are increases of counters Prometheus scraped over the run's window: node cost, HPU and idle cost,
spot savings, samples and tokens. Charts are matplotlib PNGs embedded in the HTML as base64.
"""

from __future__ import annotations

import base64
import html
import io
import re
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TextIO

from exporter import catalogue
from exporter.advisor.prom import PromError, Prometheus, Series, iso, parse_duration, parse_time, quote
from exporter.advisor.runs import (
    SAMPLES,
    AdvisorError,
    Join,
    Phase,
    fetch,
    increase,
    join_cost,
    monotonic,
    price_phases,
    resolve_job_label,
    split_phases,
    target_of,
)
from exporter.argparser import Parser

HPU_COST = catalogue.get("gaudi_hpu_cost_usd_total").name
IDLE_COST = catalogue.get("gaudi_hpu_idle_cost_usd_total").name
SPOT_SAVINGS = catalogue.get("gaudi_spot_savings_usd_total").name
SPOT_PENDING = catalogue.get("gaudi_spot_interruption_pending").name
PRICE = catalogue.get("gaudi_node_price_usd_per_hour").name
BUILD_INFO = catalogue.get("gaudi_exporter_build_info").name


class Progress:
    """A one-line progress bar on stderr while the report queries Prometheus."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream or sys.stderr, width

    def __call__(self, what: str) -> None:
        self.done = min(self.done + 1, self.total)
        filled = self.width * self.done // self.total
        self.stream.write(f"\rquerying Prometheus [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total} {what:<24}")
        self.stream.flush()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


@dataclass
class RunReport:
    job: str
    start: float
    end: float
    joined: str
    simulated: bool
    total_usd: float
    hpu_usd: float | None
    idle_usd: float | None
    spot_savings_usd: float | None
    spot_notices: int
    restarts: int
    samples: float
    tokens: float
    prices: list[str]
    projected_usd: float | None
    phases: dict[str, Phase]
    cost_curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    throughput: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def idle_share(self) -> float | None:
        return self.idle_usd / self.hpu_usd if self.hpu_usd and self.idle_usd is not None else None


def _matcher(target: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f"{k}={quote(v)}" for k, v in target) + "}"


def _rising_edges(points: list[tuple[float, float]]) -> int:
    edges, prev = 0, 0.0
    for _, v in points:
        if v >= 1 and prev < 1:
            edges += 1
        prev = v
    return edges


def _resets(points: list[tuple[float, float]]) -> int:
    return sum(1 for (_, a), (_, b) in pairwise(points) if b < a)


LOOKBACK = 300.0  # Prometheus' staleness window: a series without a point this long before `start` is new


def _in_window(s: Series, start: float, end: float) -> list[tuple[float, float]]:
    """Points in the window, led by the value at its start: the last earlier point, or 0 for a counter born
    inside the window (fetched from ``start - LOOKBACK``)."""
    inside = [(t, v) for t, v in s.points if start <= t <= end]
    before = [(t, v) for t, v in s.points if t < start]
    if before:
        return [before[-1], *inside]
    return [(inside[0][0], 0.0), *inside] if inside else []


def first_sample(prom: Prometheus, job: str, end: float, lookback: float, job_label: str) -> float:
    lab = resolve_job_label(prom, job, end - lookback, end, job_label)
    series = prom.raw(f"{SAMPLES}{{{lab}={quote(job)}}}", end - lookback, end)
    times = [s.points[0][0] for s in series if s.points]
    if not times:
        raise AdvisorError(f"job {job!r} has no {SAMPLES} samples in the {lookback:.0f}s before --to")
    return min(times)


def collect(prom: Prometheus, job: str, start: float, end: float, *, job_label: str = "auto",
            join: str = "auto", cost_selector: str | None = None, projected_usd: float | None = None,
            progress: Progress | None = None) -> RunReport:
    step = progress or (lambda _w: None)
    data = fetch(prom, job, start - LOOKBACK, end, job_label=job_label, cost_selector=cost_selector,
                 progress=step)
    targets = sorted({target_of(s.labels) for s in data.samples})
    if not targets:
        raise AdvisorError(f"job {job!r} has no {SAMPLES} series between {iso(start)} and {iso(end)}")
    j: Join = join_cost(targets, data.cost, join, explicit=data.explicit_cost)
    nodes = sorted({n for ns in j.nodes.values() for n in ns})

    def node_series(metric: str, what: str) -> list[Series]:
        step(what)
        out: list[Series] = []
        for n in nodes:
            out += prom.raw(metric + _matcher(n), start - LOOKBACK, end)
        return out

    hpu = node_series(HPU_COST, "HPU cost")
    idle = node_series(IDLE_COST, "idle cost")
    savings = node_series(SPOT_SAVINGS, "spot savings")
    pending = node_series(SPOT_PENDING, "spot notices")
    price = node_series(PRICE, "prices")
    build = node_series(BUILD_INFO, "exporter backends")

    cost_curves = {}
    total = 0.0
    for n in nodes:
        pts = monotonic(_in_window(Series({}, j.cost[n]), start, end))
        if len(pts) > 1:
            total += pts[-1][1] - pts[0][1]
            label = dict(n).get("node") or dict(n).get("instance", "?")
            cost_curves[label] = [(t, v - pts[0][1]) for t, v in pts]

    def total_of(series: list[Series]) -> float | None:
        return sum(increase(_in_window(s, start, end)) for s in series) if series else None

    throughput = {}
    samples = tokens = 0.0
    restarts = 0
    for s in data.samples:
        pts = _in_window(s, start, end)
        samples += increase(pts)
        restarts += _resets(pts)
        mono = monotonic(pts)
        label = dict(target_of(s.labels)).get("instance", "?")
        throughput[label] = [((t0 + t1) / 2, (v1 - v0) / (t1 - t0)) for (t0, v0), (t1, v1) in pairwise(mono)
                             if t1 > t0]
    for s in data.tokens:
        tokens += increase(_in_window(s, start, end))

    prices = sorted({f"{s.points[-1][1]:g} USD/h (source {s.labels.get('source', '?')}"
                     + (f", {s.labels['lifecycle']}" if s.labels.get("lifecycle") else "") + ")"
                     for s in price if s.points})
    phases = split_phases([Series(s.labels, _in_window(s, start, end)) for s in data.samples], data.info, None)
    price_phases(phases, j)
    step("done")
    return RunReport(
        job=job, start=start, end=end, joined=j.describe(),
        simulated=any(s.labels.get("backend") == "simulated" for s in build),
        total_usd=total, hpu_usd=total_of(hpu), idle_usd=total_of(idle), spot_savings_usd=total_of(savings),
        spot_notices=sum(_rising_edges(_in_window(s, start, end)) for s in pending), restarts=restarts,
        samples=samples, tokens=tokens, prices=prices, projected_usd=projected_usd, phases=phases,
        cost_curves=cost_curves, throughput=throughput)


# --- rendering
def _usd(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"${x:.3e}" if 0 < abs(x) < 0.001 else f"${x:,.{digits}f}"


def _dur(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"


def summary_rows(r: RunReport) -> list[tuple[str, str]]:
    rows = [("Window", f"{iso(r.start)} .. {iso(r.end)} ({_dur(r.end - r.start)})"),
            ("Priced by", r.joined),
            ("Price", "; ".join(r.prices) or "no price series"),
            ("Total cost", _usd(r.total_usd))]
    if r.idle_usd is not None and r.hpu_usd:
        rows.append(("Idle HPU cost", f"{_usd(r.idle_usd)} ({100 * r.idle_share:.1f}% of {_usd(r.hpu_usd)} HPU cost)"))
    else:
        rows.append(("Idle HPU cost", "n/a (no per-HPU cost series)"))
    rows.append(("Samples", f"{r.samples:,.0f}"))
    rows.append(("Cost per sample", _usd(r.total_usd / r.samples) if r.samples else "n/a (no samples)"))
    rows.append(("Tokens", f"{r.tokens:,.0f}"))
    rows.append(("Cost per 1M tokens", _usd(1e6 * r.total_usd / r.tokens) if r.tokens else "n/a (no tokens)"))
    rows.append(("Spot savings", _usd(r.spot_savings_usd) if r.spot_savings_usd is not None
                 else "n/a (no spot savings series: not a spot node)"))
    rows.append(("Spot interruption notices", str(r.spot_notices)))
    rows.append(("Training restarts (counter resets)", str(r.restarts)))
    if r.projected_usd is not None:
        diff = r.total_usd - r.projected_usd
        pct = f" ({100 * r.total_usd / r.projected_usd:.1f}% of projected)" if r.projected_usd else ""
        rows.append(("Actual vs projected", f"{_usd(r.total_usd)} vs {_usd(r.projected_usd)}: "
                     f"{'over' if diff > 0 else 'under'} by {_usd(abs(diff))}{pct}"))
    return rows


def phase_rows(r: RunReport) -> list[list[str]]:
    out = []
    for key, ph in sorted(r.phases.items(), key=lambda kv: min(w[0] for st in kv[1].targets.values()
                                                              for w in st.windows)):
        out.append([key, _dur(ph.seconds), f"{ph.samples:,.0f}", f"{ph.samples_per_second:.2f}",
                    _usd(ph.cost_usd), _usd(ph.usd_per_sample)])
    return out


PHASE_HEAD = ["settings", "duration", "samples", "samples/s", "cost", "USD/sample"]


def markdown(r: RunReport) -> str:
    lines = [f"# Training run report: job `{r.job}`", ""]
    if r.simulated:
        lines += ["> **SIMULATED DATA**: the node exporter ran the simulated backend; costs are real arithmetic "
                  "on simulated devices.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary_rows(r)]
    lines += ["", "## Phases (measured)", "", "| " + " | ".join(PHASE_HEAD) + " |",
              "|" + "---|" * len(PHASE_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in phase_rows(r)]
    lines += ["", "All figures are increases of scraped counters over the window; nothing is estimated.", ""]
    return "\n".join(lines)


def charts(r: RunReport) -> list[tuple[str, bytes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    def lines(curves: dict, title: str, ylabel: str) -> bytes:
        fig, ax = plt.subplots(figsize=(7, 3))
        for name, pts in curves.items():
            ax.plot([t - r.start for t, _ in pts], [v for _, v in pts], label=name)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if curves:
            ax.legend(fontsize=7)
        return png(fig)

    out.append(("Cumulative node cost", lines(r.cost_curves, "Cumulative node cost", "USD")))
    out.append(("Throughput", lines(r.throughput, "Throughput per scrape interval", "samples/s")))

    if r.hpu_usd and r.idle_usd is not None:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(["busy", "idle"], [r.hpu_usd - r.idle_usd, r.idle_usd], color=["tab:green", "tab:red"])
        ax.set_ylabel("USD")
        ax.set_title("HPU cost: busy vs idle")
        out.append(("HPU cost: busy vs idle", png(fig)))
    return out


def html_page(r: RunReport, images: list[tuple[str, bytes]]) -> str:
    e = html.escape
    parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
             f"<title>Training run report: {e(r.job)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             ".sim{background:#fff3cd;padding:.5em;border:1px solid #e0c060}</style></head><body>",
             f"<h1>Training run report: job <code>{e(r.job)}</code></h1>"]
    if r.simulated:
        parts.append("<p class='sim'><b>SIMULATED DATA</b>: the node exporter ran the simulated backend.</p>")
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(r))
                 + "</table>")
    parts.append("<h2>Phases (measured)</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in PHASE_HEAD)
                 + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                                     for row in phase_rows(r)) + "</table>")
    for title, data in images:
        b64 = base64.b64encode(data).decode()
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{b64}'>")
    parts.append("<p>All figures are increases of scraped counters over the window.</p></body></html>")
    return "\n".join(parts)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "job"


def main(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None,
         now: float | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    prog = "gaudi-exporter report run"
    p = Parser(prog=prog, description="Cost report of one training run from Prometheus.")
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--job", required=True, help="training job name (the job label of gaudi_training_info)")
    p.add_argument("--from", dest="start", default=None,
                   help="start (now-6h, unix, RFC 3339); default: the job's first sample within --lookback")
    p.add_argument("--to", dest="end", default="now", help="end (default now)")
    p.add_argument("--lookback", default="24h", help="how far back to look for the job's start (default 24h)")
    p.add_argument("--projected-usd", type=float, default=None, help="the budgeted cost, to compare with")
    p.add_argument("--out", default=".", help="directory for <job>-report.md and <job>-report.html")
    p.add_argument("--job-label", default="auto", help="job, exported_job or auto")
    p.add_argument("--join", default="auto", help="node, instance-host, another label, or auto")
    p.add_argument("--cost-selector", default=None, help="price with these node cost series instead of joining")
    a = p.parse_args(argv)
    now = time.time() if now is None else now
    try:
        prom = Prometheus(a.prometheus)
        end = parse_time(a.end, now)
        lookback = parse_duration(a.lookback)
        if a.projected_usd is not None and a.projected_usd < 0:
            raise ValueError("--projected-usd must be >= 0")
    except ValueError as e:
        print(f"{prog}: error: {e}", file=err)
        return 2
    progress = Progress(12, err)
    try:
        start = parse_time(a.start, now) if a.start else first_sample(prom, a.job, end, lookback, a.job_label)
        if start >= end:
            raise ValueError(f"--from ({iso(start)}) must be before --to ({iso(end)})")
        report = collect(prom, a.job, start, end, job_label=a.job_label, join=a.join,
                         cost_selector=a.cost_selector, projected_usd=a.projected_usd, progress=progress)
    except ValueError as e:
        progress.finish()
        print(f"{prog}: error: {e}", file=err)
        return 2
    except PromError as e:
        progress.finish()
        print(f"{prog}: error: {e}", file=err)
        return 1
    except AdvisorError as e:
        progress.finish()
        print(f"{prog}: cannot report: {e}", file=err)
        return 2
    progress.finish()
    md = markdown(report)
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    md_path = outdir / f"{_safe(a.job)}-report.md"
    html_path = outdir / f"{_safe(a.job)}-report.html"
    md_path.write_text(md)
    html_path.write_text(html_page(report, charts(report)))
    print(md, file=out)
    print(f"wrote {md_path} and {html_path}", file=err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
