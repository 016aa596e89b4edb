"""History for a real Prometheus: backfill OpenMetrics and recording rules with promtool, serve the data directory.

The equivalence test and benchmarks/fleet_rules.py share these steps (facts from the fleet-scale measurements:
promtool `tsdb create-blocks-from openmetrics`, then `create-blocks-from rules` against a Prometheus serving the raw
blocks; retention longer than the data, or Prometheus deletes the blocks at start).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests
import yaml

from alerts.thresholds import duration_seconds
from tests.support import procs

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _promtool(*args: str | Path, timeout: float) -> None:
    env = {**os.environ, "GOGC": "400"}  # faster imports (measured); memory is not the limit at these sizes
    res = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"promtool {' '.join(map(str, args[:3]))} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def add_blocks(src: Path, data: Path) -> int:
    """Move the blocks promtool wrote under ``src`` into a data directory (Prometheus stopped); returns how many."""
    data.mkdir(parents=True, exist_ok=True)
    moved = 0
    for block in sorted(p for p in src.iterdir() if (p / "meta.json").exists()):
        shutil.move(str(block), data / block.name)
        moved += 1
    return moved


def import_openmetrics(files: Sequence[Path], data: Path, *, block_hours: int = 24, timeout: float = 1800) -> int:
    """Backfill every file into blocks under ``data``; returns the number of blocks."""
    blocks = 0
    for i, f in enumerate(files):
        out = data.parent / f"import-{i}"
        _promtool("tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={block_hours}h", f, out,
                  timeout=timeout)
        blocks += add_blocks(out, data)
        shutil.rmtree(out, ignore_errors=True)
    return blocks


def record(prom: str, groups: list[dict], start: int, end: int, out: Path, *, timeout: float = 1800) -> Path:
    """Evaluate recording-rule ``groups`` over [start, end] at each group's interval; write blocks into ``out``.

    What `promtool tsdb create-blocks-from rules` does (a range query per rule, results as the recorded series),
    but into day-long blocks: promtool writes a 2-hour block per rule, thousands for a month, and Prometheus then
    takes minutes to open them. Rules reading another rule of the same pass see nothing (as with promtool): pass
    levels separately (node, then cluster), adding each pass' blocks (add_blocks) with Prometheus stopped.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    text = out / "recorded.om"
    with text.open("w", encoding="ascii") as fh:
        for g in groups:
            step = int(duration_seconds(g.get("interval", "1m")))
            first = start + (-start) % step
            for r in g["rules"]:
                for series in range_query(prom, r["expr"], first, end, step):
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(series["metric"].items())
                                      if k != "__name__")
                    name = r["record"] + ("{" + labels + "}" if labels else "")
                    for ts, v in series["values"]:
                        if v not in ("NaN", "+Inf", "-Inf"):
                            fh.write(f"{name} {v} {int(ts)}\n")
        fh.write("# EOF\n")
    _promtool("tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h", text, out / "blocks",
              timeout=timeout)
    text.unlink()
    return out / "blocks"


def record_passes(data: Path, passes: list[list[dict]], start: int, end: int, work: Path) -> int:
    """Record each pass of rule groups over [start, end] into ``data``, one pass after the other, so that a pass
    reads the series the passes before it recorded; returns the number of blocks added."""
    added = 0
    for i, groups in enumerate(passes):
        with serve(data) as prom:
            out = record(prom, groups, start, end, work / f"pass{i}")
        added += add_blocks(out, data)
    return added


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def range_query(prom: str, expr: str, start: int, end: int, step: int) -> list[dict]:
    """Range query in pieces of at most 10,000 steps (Prometheus refuses more than 11,000 points per series)."""
    out: dict[tuple, dict] = {}
    t = start
    while t <= end:
        stop = min(end, t + step * 9999)
        r = requests.post(prom + "/api/v1/query_range",
                          data={"query": expr, "start": t, "end": stop, "step": step}, timeout=900)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query_range {expr!r} failed: {body.get('error')}")
        for series in body["data"]["result"]:
            key = tuple(sorted(series["metric"].items()))
            out.setdefault(key, {"metric": series["metric"], "values": []})["values"] += series["values"]
        t = stop + step
    return list(out.values())


@contextlib.contextmanager
def serve(data: Path, *, max_samples: int = 50_000_000) -> Iterator[str]:
    """A real Prometheus over an existing data directory (nothing scraped); yields its URL."""
    cfg = data.parent / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1m"}, "scrape_configs": []}))
    port = procs.free_port()
    cmd = [procs.PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
           "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}",
           f"--query.max-samples={max_samples}", "--query.timeout=10m", "--log.level=warn"]
    with procs._serving(cmd, port) as base:
        yield base


def instant(prom: str, expr: str, at: float, *, stats: bool = False) -> tuple[list[dict], dict]:
    """Instant query at ``at``; returns (result, stats) - stats holds samples touched and timings (stats=all)."""
    params = {"query": expr, "time": str(at)}
    if stats:
        params["stats"] = "all"
    r = requests.get(prom + "/api/v1/query", params=params, timeout=900)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body.get('error')}")
    return body["data"]["result"], body["data"].get("stats", {})
