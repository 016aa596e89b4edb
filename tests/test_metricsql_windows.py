"""What MetricsQL's increase() does to our long windows, on backfilled days with a known truth.

Two days of node cost counters for two clusters (60 s scrapes), shaped like a fleet's: a node whose exporter is
rolled out mid-window (new `instance`, counter restarted from 0) and a node that joins mid-window. The same samples go
into a real Prometheus (promtool backfill) and a real VictoriaMetrics (/api/v1/import/prometheus); the exact spend
is known from the prices. Then:
- our budget expressions read recorded 5-minute increments, computed once (as the cluster Prometheus records them)
  and stored in both engines: they agree exactly, and with the truth;
- increments computed by MetricsQL instead (what vmalert would record) also sum to the truth;
- a raw `increase(...[1d])`, what the rules no longer do, is off in both engines for the series born in the window.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import backfill as backfill_helpers
from tests.support import procs
from tests.support.procs import REPO

STEP_S = 60  # scrape interval of the generated data
INCREMENT_S = 300  # the increments' step (alerts/rules.py STEP)
HOURS = 48
COST = "gaudi_node_cost_usd_total"
RECORDED = "cluster:gaudi_node_cost_usd:increase5m"

pytestmark = pytest.mark.skipif(any(shutil.which(b) is None for b in ("prometheus", "promtool", "victoria-metrics")),
                                reason="needs Debian's prometheus, promtool and victoria-metrics")


def _rules() -> tuple[str, str, dict[str, str]]:
    """(node increment expr, cluster increment expr, budget alert name -> expression without its threshold)."""
    groups = yaml.safe_load((REPO / "alerts" / "build" / "prometheus_rules.yaml").read_text())["groups"]
    rec = {r["record"]: r["expr"] for g in groups for r in g["rules"]}
    node = rec["node:gaudi_node_cost_usd:increase5m"]
    cluster = rec[RECORDED].replace("node:gaudi_node_cost_usd:increase5m", f"({node})")
    alerts = yaml.safe_load((REPO / "alerts" / "build" / "prometheus_alerts.yaml").read_text())["groups"]
    budgets = {r["alert"]: r["expr"].rsplit(">", 1)[0].strip() for g in alerts for r in g["rules"]
               if r["alert"] in ("GaudiDailyBudgetExceeded", "GaudiMonthlyBudgetExceeded")}
    return node, cluster, budgets


class Node:
    def __init__(self, cluster: str, name: str, usd_per_hour: float, runs: list[tuple[str, float, float]]):
        self.cluster, self.name, self.price = cluster, name, usd_per_hour
        self.runs = runs  # (instance, exporter start, exporter end): one per pod of the DaemonSet

    def spend(self, start: float, end: float) -> float:
        """The truth: the price integrated over the time an exporter ran within (start, end]."""
        return sum(max(0.0, min(end, e) - max(start, s)) for _, s, e in self.runs) * self.price / 3600


def fleet(t0: float) -> list[Node]:
    h = 3600
    end = t0 + HOURS * h
    return [
        Node("c1", "n1", 19.92, [("10.1.0.1:9654", t0 - 7 * 86400, t0 + 30 * h), ("10.1.7.4:9654", t0 + 30 * h + 40,
                                                                                   end)]),  # rolled out
        Node("c1", "n2", 19.92, [("10.1.0.2:9654", t0 - 7 * 86400, end)]),
        Node("c2", "n1", 10.40, [("10.2.0.1:9654", t0 - 7 * 86400, end)]),
        Node("c2", "n2", 10.40, [("10.2.0.2:9654", t0 + 40 * h + 25, end)]),  # joined
    ]


def exposition(nodes: list[Node], t0: float) -> str:
    """OpenMetrics text, each series' samples at its own scrape offset; a counter counts since its exporter started."""
    lines = [f"# TYPE {COST[:-len('_total')]} counter"]
    for i, n in enumerate(nodes):
        for instance, start, end in n.runs:
            t = t0 + 7 * i  # scrape offsets differ per target
            while t <= t0 + HOURS * 3600:
                if start < t <= end:
                    value = (t - start) * n.price / 3600
                    lines.append(f'{COST}{{cluster="{n.cluster}",job="gaudi-exporter",instance="{instance}",'
                                 f'node="{n.name}"}} {value:.9f} {t:.3f}')
                t += STEP_S
    return "\n".join(lines) + "\n# EOF\n"


def backfill(text: str, data: Path) -> None:
    src = data.parent / f"backfill-{time.monotonic_ns()}.om"
    src.write_text(text)
    backfill_helpers.import_openmetrics([src], data, timeout=300)


def vm_import(vm: str, text: str) -> None:
    """/api/v1/import/prometheus takes the exposition with millisecond timestamps."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value, ts = line.rsplit(" ", 2)
        out.append(f"{series} {value} {round(float(ts) * 1000)}")
    requests.post(vm + "/api/v1/import/prometheus", data="\n".join(out) + "\n", timeout=60).raise_for_status()
    requests.get(vm + "/internal/force_flush", timeout=30).raise_for_status()


def by_cluster(base: str, expr: str, at: float) -> dict[str, float]:
    return {r["metric"]["cluster"]: float(r["value"][1]) for r in procs.query(base, expr, at=at)}


def increments(base: str, expr: str, start: float, end: float) -> str:
    """The cluster increments as a rule group with interval 5m records them: evaluated at every step."""
    r = requests.get(base + "/api/v1/query_range", params={"query": expr, "start": start, "end": end,
                                                           "step": INCREMENT_S}, timeout=60).json()
    assert r["status"] == "success", r
    lines = []
    for s in r["data"]["result"]:
        for ts, v in s["values"]:
            lines.append(f'{RECORDED}{{cluster="{s["metric"]["cluster"]}"}} {v} {ts}')
    return "\n".join(lines) + "\n# EOF\n"


@contextlib.contextmanager
def scenario(tmp: Path) -> Iterator[dict]:
    """Both engines serving the same two days (raw counters and the increments Prometheus recorded from them)."""
    t0 = (int(time.time()) // 3600 - HOURS - 2) * 3600  # two days ending two hours ago, whole hours
    nodes = fleet(t0)
    raw = exposition(nodes, t0)
    node_expr, cluster_expr, budgets = _rules()
    first, last = t0 + INCREMENT_S, t0 + HOURS * 3600
    backfill(raw, tmp / "prom")
    with backfill_helpers.serve(tmp / "prom") as prom:
        recorded = increments(prom, cluster_expr, first, last)
    backfill(recorded, tmp / "prom")  # a second set of blocks: Prometheus loads them at start
    with backfill_helpers.serve(tmp / "prom") as prom, procs.victoria_metrics(tmp / "vm", "-search.disableCache") as vm:
        vm_import(vm, raw)
        vm_import(vm, recorded)
        yield {"prom": prom, "vm": vm, "nodes": nodes, "at": last, "budgets": budgets, "cluster_expr": cluster_expr,
               "t0": t0}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    with scenario(tmp_path_factory.mktemp("windows")) as e:
        yield e


def truth(nodes: list[Node], start: float, end: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in nodes:
        out[n.cluster] = out.get(n.cluster, 0.0) + n.spend(start, end)
    return out


WINDOWS = {"GaudiDailyBudgetExceeded": 86400, "GaudiMonthlyBudgetExceeded": 30 * 86400}


def test_budget_expressions_agree_exactly_and_with_the_truth(engines):
    """At a time off the increments' 5-minute grid (where a rule evaluation usually falls), both engines sum the same
    recorded samples."""
    at, nodes = engines["at"] - 17, engines["nodes"]
    for alert, expr in engines["budgets"].items():
        prom = by_cluster(engines["prom"], expr, at)
        vm = by_cluster(engines["vm"], expr, at)
        assert set(prom) == set(vm) == {"c1", "c2"}, (alert, prom, vm)
        # the recorded data starts at t0 (a real Prometheus had the days before, and increments over them)
        real = truth(nodes, max(at - WINDOWS[alert], engines["t0"]), at)
        for c in prom:
            assert vm[c] == pytest.approx(prom[c], rel=1e-9), (alert, c)
            assert prom[c] == pytest.approx(real[c], rel=0.005), (alert, c, prom[c], real[c])


def test_on_the_grid_prometheus_2_counts_the_increment_at_the_window_start_too(engines):
    """Exactly k x 5m after an increment, Prometheus 2.x's range selector [t-w, t] (closed on the left; Prometheus
    3 made it open) also takes the increment recorded at t-w, which covers the 5 minutes before the window:
    one increment more than VictoriaMetrics' (t-w, t], which matches the truth."""
    at, nodes = engines["at"], engines["nodes"]
    expr = engines["budgets"]["GaudiDailyBudgetExceeded"]
    prom, vm = by_cluster(engines["prom"], expr, at), by_cluster(engines["vm"], expr, at)
    boundary = by_cluster(engines["vm"], RECORDED, at - 86400)
    real = truth(nodes, at - 86400, at)
    for c in ("c1", "c2"):
        assert vm[c] == pytest.approx(real[c], rel=1e-3), (c, vm[c], real[c])
        assert prom[c] - vm[c] == pytest.approx(boundary[c], rel=1e-6), (c, prom[c], vm[c], boundary[c])


def test_increments_recorded_by_metricsql_sum_to_the_truth_too(engines):
    """If vmalert records the increments from raw counters (clusters without rule evaluation): each tiled 5m window
    starts at the sample the previous one ended on, so the sum is the counters' growth."""
    at, nodes = engines["at"], engines["nodes"]
    start = at - 86400
    r = requests.get(engines["vm"] + "/api/v1/query_range",
                     params={"query": engines["cluster_expr"], "start": start + INCREMENT_S, "end": at,
                             "step": INCREMENT_S}, timeout=60).json()
    sums = {s["metric"]["cluster"]: sum(float(v) for _, v in s["values"]) for s in r["data"]["result"]}
    real = truth(nodes, start, at)
    for c, got in sums.items():
        assert got == pytest.approx(real[c], rel=0.002), (c, got, real[c])


def test_a_raw_increase_over_a_day_is_off_where_series_start_or_stop_in_the_window(engines):
    """Why the rules no longer read raw counters over days. PromQL extrapolates each series towards the window's
    edges, by at most half an interval where it starts or stops inside: it misses the cost accrued before a new
    series' first scrape and adds half an interval after a stopped one's last. MetricsQL counts a new series' first
    sample when it is small next to the following step, exact here, where counters start at 0 with the exporter."""
    at, nodes = engines["at"] - 17, engines["nodes"]
    expr = f'sum by (cluster) (increase({COST}{{job="gaudi-exporter"}}[1d]))'
    prom, vm = by_cluster(engines["prom"], expr, at), by_cluster(engines["vm"], expr, at)
    real = truth(nodes, at - 86400, at)
    # in the last day: c1 has a pod that stopped and one that started (40 s later), c2 a node that joined
    edges = {"c1": 2, "c2": 1}
    price = {n.cluster: n.price for n in nodes}
    for c in ("c1", "c2"):
        assert vm[c] == pytest.approx(real[c], rel=1e-3), ("MetricsQL", c, vm[c], real[c])
        one_interval = STEP_S * price[c] / 3600
        assert 0 < abs(prom[c] - real[c]) <= edges[c] * one_interval, ("PromQL", c, prom[c], real[c])
