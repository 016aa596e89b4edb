"""The global view (deploy/local/global_stack.py) run headless: two simulated clusters remote-write to one
VictoriaMetrics; our alerts run in vmalert against it (and, unchanged, in each cluster's Prometheus); a reference
Prometheus receives the same remote writes, so every dashboard query can be compared between PromQL and MetricsQL on
the very same samples.

How far the engines may differ, and why (docs/deploy.md, "MetricsQL and our windows"):
- instant values, recorded series and sums or averages over them (every window of days reads recorded 5-minute
  increments): the same samples, the same answer (relative 1e-9);
- rate()/increase() over raw counters: MetricsQL does not extrapolate (it takes the last sample before the window)
  and counts the first sample of a series born inside the window (our counters start at 0 with the exporter), where
  PromQL extrapolates at most half an interval. Each effect is worth about one scrape interval of growth (the first
  sample up to two: the exporter runs a little before its first scrape), so the tolerance is
  3 x scrape interval / min(window, age of the data), relative to the larger answer (for ratios, to 1);
- subqueries: the engines align the inner steps differently (one step more or less per window): 2 x step / window.
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

import dashboards
from alerts.thresholds import duration_seconds
from dashboards import queries
from tests.support import procs
from tests.support.procs import REPO, wait_for

STACK = REPO / "deploy" / "local" / "global_stack.py"
SCRAPE_S = 5  # global_stack.SCRAPE_INTERVAL
# Cluster 1 spends 19.92 USD/h, cluster 2 0.2 USD/h: over the budgets below within seconds, and not for half an hour.
PRICES = (19.92, 0.2)
BUDGETS = {"daily_usd": 0.1, "monthly_usd": 0.2}
MIN_AGE_S = 75  # data older than the longest short window compared (60 s), plus a scrape
RATIO_UNITS = {"percentunit"}
BUDGET_ALERTS = {"GaudiDailyBudgetExceeded", "GaudiMonthlyBudgetExceeded"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(b) is None for b in ("prometheus", "prometheus-alertmanager",
                                                             "victoria-metrics", "vmalert")),
                       reason="needs Debian's prometheus, prometheus-alertmanager and victoria-metrics"),
]


def low_thresholds(path: Path) -> Path:
    """The user's thresholds with tiny budgets and one-minute forecasts, so budgets fire within seconds for the
    expensive cluster only."""
    t = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())
    t["budgets"]["cluster"] = dict(BUDGETS)
    for period in ("daily", "monthly"):
        t["budgets"][period].update(forecast_horizon="1m", burn_rate_window="1m")
    path.write_text(yaml.safe_dump(t, sort_keys=False))
    return path


class GlobalStack:
    def __init__(self, tmp: Path):
        args = ["--clusters", "2", "--usd-per-hour", ",".join(map(str, PRICES)), "--thresholds",
                str(low_thresholds(tmp / "thresholds.yaml")), "--alert-for", "1s", "--increment-step", "15s",
                "--reference-prometheus",
                "--cluster-alerts", "--run-dir", str(tmp / "run"), "--status-every", "15", "--duration", "600"]
        self.proc = subprocess.Popen([sys.executable, str(STACK), "--no-install", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"})
        self.output: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.urls: dict[str, str] = {}
        self.ready_at = 0.0
        self.run_dir = tmp / "run"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_ready(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if m := re.match(r"\s+URL (\S+)\s+(http://127\.0\.0\.1:\d+)", line):
                self.urls[m.group(1)] = m.group(2)
            if line.startswith("[global] ready"):
                self.ready_at = time.time()
                return
        raise AssertionError("the global stack did not come up:\n" + "".join(self.output)[-4000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = GlobalStack(tmp_path_factory.mktemp("global"))
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
    assert s.proc.returncode == 0, "".join(s.output)[-3000:]
    assert "[global] stopped\n" in s.output


def _instant(base: str, expr: str, at: float) -> tuple[dict | None, str | None]:
    body = requests.get(base + "/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=30).json()
    if body.get("status") != "success":
        return None, body.get("error", "no error text")
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
            for r in body["data"]["result"]}, None


def test_every_cluster_reaches_victoria_metrics_with_its_cluster_label(stack):
    vm = stack.urls["victoria-metrics"]

    want = {(c, j) for c in ("cluster-1", "cluster-2") for j in ("gaudi-exporter", "gaudi-exporter-market")}

    def seen():
        result, _ = _instant(vm, "count by (cluster, job) (up == 1)", time.time())
        return {(dict(k).get("cluster"), dict(k).get("job")) for k in result or {}}

    wait_for(lambda: seen() == want, 60, what=f"up == 1 for {sorted(want)} in VictoriaMetrics")
    # recorded per cluster, forwarded with the cluster's external label: one series per cluster, none unlabelled
    wait_for(lambda: len(_instant(vm, "cluster:gaudi_node_cost_usd_per_hour:rate5m", time.time())[0] or {}) == 2,
             60, what="the per-cluster recording rule of both clusters in VictoriaMetrics")
    rates = _instant(vm, "cluster:gaudi_node_cost_usd_per_hour:rate5m", time.time())[0]
    assert {dict(k).get("cluster") for k in rates} == {"cluster-1", "cluster-2"} and min(rates.values()) > 0
    prices = _instant(vm, 'gaudi_node_price_usd_per_hour{job="gaudi-exporter"}', time.time())[0]
    assert {dict(k)["cluster"]: v for k, v in prices.items()} == {"cluster-1": PRICES[0], "cluster-2": PRICES[1]}


def test_budget_alerts_fire_for_the_expensive_cluster_only_globally_and_per_cluster(stack):
    am, vmalert = stack.urls["alertmanager"], stack.urls["vmalert"]
    prom1 = stack.urls["cluster-1-prometheus"]

    def budget_alerts():
        alerts = requests.get(am + "/api/v2/alerts", timeout=5).json()
        return [a for a in alerts if a["labels"]["alertname"] in BUDGET_ALERTS]

    def both_sources():
        found = {(a["labels"]["alertname"], a["labels"].get("cluster"), _source(a["generatorURL"], stack.urls))
                 for a in budget_alerts()}
        want = {(n, "cluster-1", src) for n in BUDGET_ALERTS for src in ("vmalert", "cluster-1-prometheus")}
        return found if want <= found else None

    found = wait_for(both_sources, 150, interval=2,
                     what="daily and monthly budget alerts of cluster-1 from vmalert and from cluster-1's Prometheus")
    assert {c for _, c, _ in found} == {"cluster-1"}, f"a budget alert for the wrong cluster: {sorted(found)}"
    # vmalert sees both clusters and judges each: cluster-2 is evaluated, under budget
    groups = requests.get(vmalert + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) > 10 and all("health" in r for r in rules)
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == [], "rules failing in vmalert"
    spend, _ = _instant(stack.urls["victoria-metrics"],
                        'sum by (cluster) (increase(gaudi_node_cost_usd_total{job="gaudi-exporter"}[1d]))', time.time())
    spend = {dict(k)["cluster"]: v for k, v in spend.items()}
    assert spend["cluster-1"] > BUDGETS["daily_usd"] > spend["cluster-2"] > 0
    # the per-cluster Prometheus has no cluster label in its own data: Alertmanager got it from external_labels
    local = requests.get(prom1 + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    assert {a["labels"]["alertname"] for a in local if a["state"] == "firing"} >= BUDGET_ALERTS
    assert all("cluster" not in a["labels"] for a in local)
    # ... and the routing tree delivers them to the budget receiver (after its group_wait)
    def delivered():
        notes = requests.get(stack.urls["receiver"], timeout=5).json()["notifications"]
        return [(n["receiver"], a["labels"].get("cluster")) for n in notes for a in n["alerts"]
                if a["labels"]["alertname"] in BUDGET_ALERTS and a["status"] == "firing"]

    got = wait_for(delivered, 90, interval=2, what="budget alerts delivered by Alertmanager")
    assert {c for _, c in got} == {"cluster-1"} and {r for r, _ in got} <= {"gaudi-budget", "gaudi-page"}


def _source(generator_url: str, urls: dict[str, str]) -> str:
    for name in ("vmalert", "cluster-1-prometheus", "cluster-2-prometheus"):
        if generator_url.startswith(urls[name]):
            return name
    return generator_url


_WINDOW = re.compile(r"\[(\w+)(?::(\w+))?\]")
_COUNTER_FUNCTION = re.compile(r"\b(?:rate|increase|irate|delta|idelta|deriv)\s*\(")
EXACT = 1e-9


def tolerance(expr: str, age_s: float) -> float:
    """Relative tolerance for one query (see the module docstring): EXACT unless it applies a counter function to a
    window, or holds a subquery."""
    tol = EXACT
    counters = bool(_COUNTER_FUNCTION.search(expr))
    for window, step in _WINDOW.findall(expr):
        w = min(duration_seconds(window), age_s)
        if step:
            tol = max(tol, 2 * duration_seconds(step) / w)
        elif counters:
            tol = max(tol, 3 * SCRAPE_S / w)
    return tol


def _agree(a: float, b: float, tol: float, ratio: bool) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(abs(a), abs(b), 1.0 if ratio else 0.0) + 1e-12


def _units(board) -> dict[int, str]:
    return {p["id"]: p.get("fieldConfig", {}).get("defaults", {}).get("unit", "") for p in board.json["panels"]}


# (name, $__range in seconds): a short range fully inside the data, and the 30-day range over all of it. Grafana's
# $__interval is the range over ~1,000 points, never below the scrape interval.
# With every variable on All, and drilled down to one cluster (the global view's first choice).
RANGES = [("short", 60, {}), ("30 days", 30 * 86400, {}), ("short, cluster-2", 60, {"cluster": "cluster-2"})]


def _wait_for_data_age(stack) -> tuple[float, float]:
    """(query time, age of the data then): old enough for the short windows, both engines past the last write."""
    wait = stack.ready_at + MIN_AGE_S - time.time()
    if wait > 0:
        time.sleep(wait)
    at = time.time() - 2 * SCRAPE_S  # both engines have every sample up to here (remote write sends each second)
    return at, at - stack.ready_at


@pytest.mark.parametrize("range_name,range_s,values", RANGES, ids=[r[0] for r in RANGES])
def test_every_panel_query_runs_on_victoria_metrics_and_agrees_with_prometheus(stack, range_name, range_s, values):
    vm, ref = stack.urls["victoria-metrics"], stack.urls["reference"]
    at, age = _wait_for_data_age(stack)
    problems, compared = [], 0
    for board in dashboards.boards():
        units = _units(board)
        for t in queries.panel_targets(board):
            expr = queries.expand(t.expr, values, range_s=range_s, rate_interval="1m",
                                  interval_s=max(SCRAPE_S, range_s // 1000))
            where = f"{board.uid} / {t.panel_title!r} {t.ref}: {expr}"
            got, error = _instant(vm, expr, at)
            want, ref_error = _instant(ref, expr, at)
            assert ref_error is None, f"{where}\n    Prometheus: {ref_error}"
            if error:
                problems.append(f"{where}\n    VictoriaMetrics: {error}")
                continue
            tol, ratio = tolerance(expr, age), units.get(t.panel_id) in RATIO_UNITS
            if expr.lstrip().startswith(("topk", "bottomk")):
                # near-equal values may swap ranks across engines: compare the ranked values
                ok = len(got) == len(want) and all(
                    _agree(a, b, tol, ratio) for a, b in zip(sorted(got.values()), sorted(want.values()), strict=True))
            else:
                ok = set(got) == set(want) and all(_agree(got[k], want[k], tol, ratio) for k in got)
            compared += 1
            if not ok:
                problems.append(f"{where}\n    tolerance {tol:.2g}: VictoriaMetrics {sorted(got.items())[:4]}\n"
                                f"    Prometheus {sorted(want.items())[:4]}")
    assert compared > 50
    assert not problems, f"{len(problems)} of {compared} queries disagree:\n" + "\n".join(problems)


def test_variables_and_annotations_give_the_same_answers(stack):
    """The template variables (label_values) and annotations, on both engines: the same label values, no errors."""
    vm, ref = stack.urls["victoria-metrics"], stack.urls["reference"]
    at, _ = _wait_for_data_age(stack)
    clusters = None
    for board in dashboards.boards():
        for name, q in queries.variable_queries(board):
            expr, label = queries.label_values_as_promql(queries.expand(q))
            got, error = _instant(vm, expr, at)
            want, _ = _instant(ref, expr, at)
            assert error is None, f"{board.uid} variable {name}: {expr}: {error}"
            assert set(got) == set(want), (board.uid, name, expr)
            if name == "cluster":
                clusters = {dict(k).get("cluster") for k in got}
        for name, expr, _needs in queries.annotation_exprs(board):
            got, error = _instant(vm, queries.expand(expr), at)
            want, _ = _instant(ref, queries.expand(expr), at)
            assert error is None and got == want, (board.uid, name)
    assert clusters == {"cluster-1", "cluster-2"}, "the global view's cluster variable lists both clusters"


def test_a_cluster_that_stops_sending_is_reported_absent_by_name_in_the_global_view(stack):
    """Last (it pauses a part): cluster-2's Prometheus stops (SIGSTOP, as a hung or partitioned server) and its
    series go stale in VictoriaMetrics; `absent(up{...})` alone would stay silent, as cluster-1 still has targets."""
    import psutil

    config = f"--config.file={stack.run_dir / 'cluster-2-prometheus.yml'}"
    (prom2,) = [p for p in psutil.Process(stack.proc.pid).children() if config in p.cmdline()]
    vmalert = stack.urls["vmalert"]

    def absent_for(cluster: str) -> list[dict]:
        alerts = requests.get(vmalert + "/api/v1/alerts", timeout=5).json()["data"]["alerts"] or []
        return [a for a in alerts if a["labels"]["alertname"] == "GaudiExporterAbsent"
                and a["labels"].get("cluster") == cluster and a["state"] == "firing"]

    assert absent_for("cluster-2") == []
    prom2.send_signal(signal.SIGSTOP)
    try:
        (alert,) = wait_for(lambda: absent_for("cluster-2"), 120, interval=2,
                            what="GaudiExporterAbsent for cluster-2 in vmalert")
        assert "cluster-2" in alert["annotations"]["description"]
        assert absent_for("cluster-1") == [] and absent_for(None) == []
    finally:
        prom2.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("dedup", [True, False], ids=["deduplicated", "not deduplicated"])
def test_an_ha_pair_counts_once_with_the_documented_victoria_metrics_flags(tmp_path, dedup):
    """docs/deploy.md's recipe for an HA Prometheus pair on VictoriaMetrics: drop the replica label at ingestion
    (-relabelConfig) and keep one sample per scrape interval (-dedup.minScrapeInterval). Without it, spend doubles."""
    relabel = tmp_path / "relabel.yml"
    relabel.write_text(yaml.safe_dump([{"action": "labeldrop", "regex": "prometheus_replica"}]))
    flags = [f"-relabelConfig={relabel}", "-dedup.minScrapeInterval=30s"] if dedup else []
    start = int(time.time()) - 3600
    lines = [f'gaudi_node_cost_usd_total{{cluster="c1",job="gaudi-exporter",prometheus_replica="{r}"}} '
             f"{i * 0.1:.1f} {(start + i * 30 + offset) * 1000}"
             for r, offset in (("a", 0), ("b", 7)) for i in range(100)]  # the replicas scrape 7 s apart
    with procs.victoria_metrics(tmp_path / "vm", *flags) as vm:
        requests.post(vm + "/api/v1/import/prometheus", data="\n".join(lines) + "\n", timeout=10).raise_for_status()
        requests.get(vm + "/internal/force_flush", timeout=10).raise_for_status()
        at = start + 99 * 30 + 10
        spend = wait_for(lambda: _instant(vm, 'sum(increase(gaudi_node_cost_usd_total{job="gaudi-exporter"}[1h]))',
                                          at)[0], 10, what="imported samples queryable")
    assert list(spend.values()) == [pytest.approx(9.9 if dedup else 19.8)]


def test_vmalert_accepts_the_generated_rule_files(tmp_path):
    """What docs/deploy.md promises: the generated files load into vmalert as they are (MetricsQL parses our PromQL,
    the annotation templates are valid for it)."""
    files = sorted((REPO / "alerts" / "build").glob("*.yaml"))
    assert len(files) == 2

    def dry_run(paths: list[Path]) -> subprocess.CompletedProcess:
        return subprocess.run(["vmalert", "-dryRun", *[f"-rule={f}" for f in paths]], capture_output=True, text=True,
                              timeout=60)

    done = dry_run(files)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    broken = tmp_path / "broken.yaml"  # one parenthesis missing: vmalert must say so, or this test proves nothing
    broken.write_text((REPO / "alerts" / "build" / "prometheus_alerts.yaml").read_text().replace(
        "sum by (cluster)", "sum by (cluster", 1))
    assert dry_run([broken]).returncode != 0
