"""Figures: PromQL (Prometheus 2.42) vs MetricsQL (VictoriaMetrics 1.79) on the same backfilled days, against the truth.

    python benchmarks/metricsql_windows.py

The scenario of tests/test_metricsql_windows.py (two clusters, 60 s scrapes, two days, a pod rolled out and a node
joining inside the last day; the exact spend known from the prices): prints, per cluster, each engine's answer and
its error against the truth for the budget expressions (recorded 5-minute increments) off and on the 5-minute grid,
for a raw `increase(...[1d])`, and for increments recorded by MetricsQL instead. Asserts nothing; data lives in a
temporary directory, deleted at the end.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_metricsql_windows import (  # noqa: E402
    COST,
    INCREMENT_S,
    WINDOWS,
    by_cluster,
    scenario,
    truth,
)


def _row(what: str, prom: dict[str, float] | None, vm: dict[str, float], real: dict[str, float]) -> None:
    for c in sorted(real):
        p = f"{prom[c]:10.3f} {100 * (prom[c] - real[c]) / real[c]:+8.4f}%" if prom else f"{'-':>10} {'':>9}"
        print(f"  {what:<46} {c:<3} {real[c]:10.3f}   {p}   {vm[c]:10.3f} {100 * (vm[c] - real[c]) / real[c]:+8.4f}%")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="metricsql-windows-"))
    try:
        with scenario(tmp) as e:
            print(f"  {'query (USD)':<46} {'cl':<3} {'truth':>10}   {'Prometheus':>10} {'error':>9}   "
                  f"{'Victoria':>10} {'error':>9}")
            for label, at in (("off the 5m grid", e["at"] - 17), ("on the 5m grid", e["at"])):
                for alert, expr in e["budgets"].items():
                    real = truth(e["nodes"], max(at - WINDOWS[alert], e["t0"]), at)
                    _row(f"{alert} ({label})", by_cluster(e["prom"], expr, at), by_cluster(e["vm"], expr, at), real)
            at = e["at"] - 17
            expr = f'sum by (cluster) (increase({COST}{{job="gaudi-exporter"}}[1d]))'
            _row("raw increase over 1d", by_cluster(e["prom"], expr, at), by_cluster(e["vm"], expr, at),
                 truth(e["nodes"], at - 86400, at))
            start = e["at"] - 86400
            r = requests.get(e["vm"] + "/api/v1/query_range", params={
                "query": e["cluster_expr"], "start": start + INCREMENT_S, "end": e["at"], "step": INCREMENT_S},
                timeout=60).json()
            sums = {s["metric"]["cluster"]: sum(float(v) for _, v in s["values"]) for s in r["data"]["result"]}
            _row("1d of increments recorded by MetricsQL", None, sums, truth(e["nodes"], start, e["at"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
