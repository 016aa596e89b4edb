"""`gaudi-exporter dashboards render`: draw each dashboard as a PNG from a live Prometheus, without Grafana.

For the README: every panel's queries run against the Prometheus given (variables = All), laid out on the same
24-column grid as in Grafana. Time series and state timelines as lines/bands, stats as big numbers with their unit,
gauges and bar gauges as bars, tables as text. It is a picture of the data, not a pixel copy of Grafana.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

import dashboards  # noqa: E402
from dashboards import queries  # noqa: E402
from dashboards.panels import Board  # noqa: E402
from exporter.argparser import Parser

BG, PANEL_BG, TEXT, GRID, DIM = "#111217", "#181b1f", "#d8d9da", "#2c3235", "#8e8e8e"
COLOURS = {"green": "#73BF69", "red": "#F2495C", "orange": "#FF9830", "yellow": "#FADE2A", "blue": "#5794F2",
           "purple": "#B877D9"}
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0", "#37872D",
           "#FADE2A", "#447EBC", "#C4162A"]
COL_IN = 0.75  # inches per grid column
ROW_IN = 0.36  # inches per grid row (Grafana: 30 px + margin)


# --- units ------------------------------------------------------------------------------------------------------


def fmt(value: float, unit: str, decimals: int | None = None) -> str:
    """A value as Grafana would print it with this unit (the common cases we use)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "No data"
    d = 2 if decimals is None else decimals
    if unit == "currencyUSD":
        if decimals is None and 0 < abs(value) < 1:
            d = 4
        if abs(value) >= 1e6:
            return f"${value / 1e6:,.2f}M"
        return f"${value:,.{d}f}"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "bytes":
        for suffix, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if abs(value) >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value:.0f} B"
    if unit == "watt":
        return f"{value / 1000:.2f} kW" if abs(value) >= 1000 else f"{value:.0f} W"
    if unit == "celsius":
        return f"{value:.1f} °C"
    if unit == "kwatth":
        return f"{value:.3f} kWh"
    if unit == "h":
        return f"{value:.{1 if decimals is None else decimals}f} hour"
    if unit == "s":
        v = int(round(value))
        if v >= 3600:
            return f"{v // 3600} h {v % 3600 // 60} min"
        return f"{v // 60} min {v % 60} s" if v >= 60 else f"{v} s"
    if unit == "bool_yes_no":
        return "yes" if value else "no"
    if unit.startswith("suffix:"):
        return f"{value:.{1 if decimals is None else decimals}f} {unit.split(':', 1)[1].strip()}"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}K"
    return f"{value:.{0 if decimals is None and float(value).is_integer() else d}f}"


def step_colour(value: float, steps: list[dict[str, Any]]) -> str:
    colour = steps[0]["color"]
    for s in steps[1:]:
        if value >= s["value"]:
            colour = s["color"]
    return COLOURS.get(colour, colour)


def mapped(value: float, mappings: list[dict[str, Any]]) -> tuple[str, str] | None:
    for m in mappings:
        opt = m.get("options", {}).get(str(int(value)) if float(value).is_integer() else str(value))
        if opt:
            return opt["text"], COLOURS.get(opt["color"], opt["color"])
    return None


# --- Prometheus ---------------------------------------------------------------------------------------------------


class Prom:
    def __init__(self, url: str, range_s: int, step: int, now: float | None = None) -> None:
        self.url, self.range_s, self.step = url.rstrip("/"), range_s, step
        self.now = now or time.time()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        r = requests.get(self.url + path, params=params, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params['query']}: {body.get('error')}")
        return body["data"]["result"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": queries.expand(expr, range_s=self.range_s),
                                           "time": str(self.now)})

    def series(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": queries.expand(expr, range_s=self.range_s),
                                                 "start": str(self.now - self.range_s), "end": str(self.now),
                                                 "step": str(self.step)})


# --- panels ---------------------------------------------------------------------------------------------------------


def _style(ax, title: str) -> None:
    ax.set_facecolor(PANEL_BG)
    for s in ax.spines.values():
        s.set_color(GRID)
    ax.tick_params(colors=DIM, labelsize=7)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", pad=4, fontweight="bold")


def _no_data(ax) -> None:
    ax.text(0.5, 0.45, "No data", color=DIM, ha="center", va="center", fontsize=11, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _times(values: list[list[Any]]):
    import datetime as dt

    return [dt.datetime.fromtimestamp(float(t)) for t, _ in values], [float(v) for _, v in values]


def draw_timeseries(ax, panel: dict[str, Any], prom: Prom) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    lines = []
    for t in panel["targets"]:
        for r in prom.series(t["expr"]):
            lines.append((queries.legend(t["legendFormat"], r["metric"]), *_times(r["values"])))
    if not lines:
        return _no_data(ax)
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
    bars = panel["fieldConfig"]["defaults"].get("custom", {}).get("drawStyle") == "bars"
    if stacked and len({len(x) for _, x, _ in lines}) == 1:
        ax.stackplot(lines[0][1], *[y for _, _, y in lines], labels=[n for n, _, _ in lines],
                     colors=PALETTE[: len(lines)] * (1 + len(lines) // len(PALETTE)), alpha=0.7)
    else:
        for i, (name, x, y) in enumerate(lines):
            colour = PALETTE[i % len(PALETTE)]
            if bars:
                ax.bar(x, y, width=prom.step / 86400 * 0.8, color=colour, label=name)
            else:
                ax.plot(x, y, color=colour, linewidth=1.2, label=name)
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    if panel["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
        for s in steps[1:]:
            ax.axhline(s["value"], color=COLOURS.get(s["color"], s["color"]), linestyle="--", linewidth=1)
    d = panel["fieldConfig"]["defaults"]
    lo, hi = ax.get_ylim()
    ax.set_ylim(d.get("min", lo), d.get("max", hi) if "max" in d else max(hi, lo + 1e-9))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v, unit)))
    ax.xaxis.set_major_locator(mdates.MinuteLocator(interval=max(1, prom.range_s // 300)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.grid(color=GRID, linewidth=0.5)
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    if len(handles) > 9:  # Grafana scrolls its legend; a picture shows the first ones and says how many are left
        extra = len(handles) - 8
        handles, labels = handles[:8], labels[:8]
        handles.append(matplotlib.lines.Line2D([], [], color=PANEL_BG))
        labels.append(f"... {extra} more")
    leg = ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6, frameon=False,
                    labelcolor=TEXT)
    leg.set_in_layout(False)


def draw_state_timeline(ax, panel: dict[str, Any], prom: Prom) -> None:
    d = panel["fieldConfig"]["defaults"]
    rows = []
    for t in panel["targets"]:
        for r in prom.series(t["expr"]):
            rows.append((queries.legend(t["legendFormat"], r["metric"]), *_times(r["values"])))
    if not rows:
        return _no_data(ax)
    rows.sort(key=lambda r: r[0])
    for i, (_, x, y) in enumerate(rows):
        xs = mdates.date2num(x)
        width = (xs[1] - xs[0]) if len(xs) > 1 else 1 / 1440
        for xv, yv in zip(xs, y, strict=True):
            m = mapped(yv, d.get("mappings", []))
            colour = m[1] if m else step_colour(yv, d["thresholds"]["steps"])
            ax.barh(i, width, left=xv, height=0.85, color=colour, linewidth=0)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=6, color=TEXT)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.xaxis_date()
    ax.xaxis.set_major_locator(mdates.MinuteLocator(interval=max(1, prom.range_s // 300)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))


def _instant_values(panel: dict[str, Any], prom: Prom) -> list[tuple[str, float]]:
    out = []
    for t in panel["targets"]:
        for r in prom.instant(t["expr"]):
            out.append((queries.legend(t["legendFormat"], r["metric"]), float(r["value"][1])))
    return out


def draw_stat(ax, panel: dict[str, Any], prom: Prom) -> None:
    d = panel["fieldConfig"]["defaults"]
    values = _instant_values(panel, prom)
    ax.set_xticks([])
    ax.set_yticks([])
    if not values:
        return _no_data(ax)
    n = len(values)
    for i, (name, v) in enumerate(values):
        y = 0.45 if n == 1 else 0.8 - i * (0.7 / max(n - 1, 1))
        colour = step_colour(v, d["thresholds"]["steps"])
        size = 22 if n == 1 else 12
        ax.text(0.5, y, fmt(v, d["unit"], d.get("decimals")), color=colour, fontsize=size, ha="center",
                va="center", fontweight="bold", transform=ax.transAxes)
        if n > 1:
            ax.text(0.5, y - 0.12, name or "-", color=DIM, fontsize=7, ha="center", transform=ax.transAxes)
    if panel.get("timeFrom"):
        ax.text(0.99, 0.02, f"time: {panel['timeFrom']}", color=DIM, fontsize=6, ha="right",
                transform=ax.transAxes)


def draw_bars(ax, panel: dict[str, Any], prom: Prom) -> None:
    """Gauges and bar gauges: one horizontal bar per value against min..max."""
    d = panel["fieldConfig"]["defaults"]
    values = _instant_values(panel, prom)
    if not values:
        return _no_data(ax)
    lo = d.get("min", 0.0)
    hi = d.get("max", max(v for _, v in values) * 1.15 or 1.0)
    ax.set_xlim(lo, hi)
    names = [n for n, _ in values]
    for i, (_, v) in enumerate(values):
        ax.barh(i, hi - lo, left=lo, color=GRID, height=0.6)
        ax.barh(i, max(min(v, hi) - lo, 0), left=lo, color=step_colour(v, d["thresholds"]["steps"]), height=0.6)
        ax.text(hi, i, " " + fmt(v, d["unit"], d.get("decimals")), color=TEXT, va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=7, color=TEXT)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v, d["unit"])))
    if panel["type"] == "gauge":
        for s in d["thresholds"]["steps"][1:]:
            ax.axvline(s["value"], color=COLOURS.get(s["color"], s["color"]), linewidth=1.5)


def draw_table(ax, panel: dict[str, Any], prom: Prom) -> None:
    d = panel["fieldConfig"]["defaults"]
    org = next((t["options"] for t in panel["transformations"] if t["id"] == "organize"), {})
    hidden, rename = set(org.get("excludeByName", {})), org.get("renameByName", {})
    merged: dict[tuple, dict[str, Any]] = {}
    multi = len(panel["targets"]) > 1
    for t in panel["targets"]:
        for r in prom.instant(t["expr"]):
            key = tuple(sorted(r["metric"].items()))
            row = merged.setdefault(key, dict(r["metric"]))
            row[f"Value #{t['refId']}" if multi else "Value"] = float(r["value"][1])
    ax.set_xticks([])
    ax.set_yticks([])
    if not merged:
        return _no_data(ax)
    seen = dict.fromkeys(k for row in merged.values() for k in row)
    cols = [c for c in [*rename, *seen] if c in seen and c not in hidden and c != "__name__"]
    cols = list(dict.fromkeys(cols))
    values = [c for c in cols if c.startswith("Value")]
    cols = [c for c in cols if c not in values] + values
    sort = (panel["options"].get("sortBy") or [{}])[0]
    sort_col = next((c for c in cols if rename.get(c, c) == sort.get("displayName")), values[0])
    rows = sorted(merged.values(), key=lambda r: r.get(sort_col, 0), reverse=bool(sort.get("desc")))
    # a row one query has no value for (e.g. read errors of hpu="unknown", which no device's up series matches)
    # shows an empty cell, as Grafana's merge does
    cells = [[(fmt(r[c], d["unit"], d.get("decimals")) if c in r else "") if c in values else str(r.get(c, ""))
              for c in cols] for r in rows]
    tbl = ax.table(cellText=cells, colLabels=[rename.get(c, c) for c in cols], loc="upper center",
                   cellLoc="left", colLoc="left", bbox=[0, 0, 1, 1] if len(rows) > 6 else None)
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(7)
    for (r, _), cell in tbl.get_celld().items():
        cell.set_facecolor(PANEL_BG if r else GRID)
        cell.set_edgecolor(GRID)
        cell.get_text().set_color(TEXT)


DRAW = {"timeseries": draw_timeseries, "state-timeline": draw_state_timeline, "stat": draw_stat,
        "gauge": draw_bars, "bargauge": draw_bars, "table": draw_table}


def render(board: Board, prom: Prom, out: Path) -> tuple[Path, list[str]]:
    """Draw one dashboard; returns the PNG path and the panels that failed (drawn with their error)."""
    errors: list[str] = []
    panels = board.json["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header = 1.6
    fig = plt.figure(figsize=(24 * COL_IN, rows * ROW_IN + header * ROW_IN), facecolor=BG)
    H = rows + header
    fig.text(0.01, 1 - 0.5 / H, board.title, color=TEXT, fontsize=14, fontweight="bold", va="center")
    fig.text(0.99, 1 - 0.5 / H, f"last {prom.range_s // 60} min, all variables = All  (rendered from Prometheus "
             "by dashboards/render.py)", color=DIM, fontsize=8, ha="right", va="center")
    for p in panels:
        g = p["gridPos"]
        # Leave room inside the cell for labels (left), the legend (right) and the title (top).
        has_legend = p["type"] == "timeseries"
        has_ylabels = p["type"] in ("state-timeline", "bargauge", "gauge")
        pad_l = (2.8 if has_ylabels else 1.0) if p["type"] not in ("stat", "table") else 0.15
        pad_r = min(3.6, g["w"] * 0.32) if has_legend else (1.4 if p["type"] in ("bargauge", "gauge") else 0.15)
        left = (g["x"] + pad_l) / 24
        width = (g["w"] - pad_l - pad_r) / 24
        bottom = 1 - (header + g["y"] + g["h"] - 0.55) / H
        height = (g["h"] - 1.5) / H
        frame = fig.add_axes([(g["x"] + 0.05) / 24, 1 - (header + g["y"] + g["h"] - 0.05) / H, (g["w"] - 0.1) / 24,
                              (g["h"] - 0.1) / H])
        frame.set_facecolor(PANEL_BG)
        frame.set_xticks([])
        frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color(GRID)
        frame.set_zorder(0)
        frame.text(0.01, 0.97, p["title"], color=TEXT, fontsize=9, fontweight="bold", va="top",
                   transform=frame.transAxes)
        ax = fig.add_axes([left, bottom, width, height])
        ax.set_zorder(1)
        _style(ax, "")
        try:
            DRAW[p["type"]](ax, p, prom)
        except Exception as e:  # one bad panel must not lose the picture; say what failed on the panel itself
            errors.append(f"{board.uid} / {p['title']}: {e}")
            ax.text(0.5, 0.5, f"error: {e}"[:120], color=COLOURS["red"], ha="center", fontsize=7, wrap=True,
                    transform=ax.transAxes)
        if p["type"] in ("stat", "table"):
            for s in ax.spines.values():
                s.set_visible(False)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dashboard-{board.uid}.png"
    fig.savefig(path, dpi=80, facecolor=BG)
    plt.close(fig)
    return path, errors


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="gaudi-exporter dashboards render", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="directory for dashboard-<uid>.png")
    ap.add_argument("--range", type=int, default=300, dest="range_s", help="seconds of history to draw")
    ap.add_argument("--step", type=int, default=5, help="query_range step, seconds")
    ap.add_argument("--only", action="append", default=[], help="render only this uid (repeatable)")
    args = ap.parse_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        requests.get(args.prometheus.rstrip("/") + "/-/ready", timeout=5).raise_for_status()
    except requests.RequestException as e:
        print(f"dashboards render: Prometheus at {args.prometheus} is not ready: {e}", file=sys.stderr)
        return 2
    prom = Prom(args.prometheus, args.range_s, args.step)
    failed: list[str] = []
    for b in dashboards.boards():
        if args.only and b.uid not in args.only:
            continue
        path, errors = render(b, prom, args.out)
        failed += errors
        print(path)
    for e in failed:
        print(f"dashboards render: panel failed: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
