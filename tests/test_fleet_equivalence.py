"""The long windows summed from recorded 5-minute increments give the answers the raw-counter expressions gave.

A month of fleet history (two clusters that reuse pod addresses and node names, exporter restarts that reset every
counter and change `instance`, pods moving between namespaces) is backfilled into a real Prometheus with promtool;
the recording rules are evaluated over it at their group's interval and backfilled the same way (what
`promtool tsdb create-blocks-from rules` does, in fewer blocks: tests/support/backfill.py); then each long-window
expression as it was (increase()/rate() over raw counters) and as it is now (the generated rules and dashboards)
is evaluated at the same instant and must agree within TOLERANCE.

Small on purpose (2 clusters x 2 nodes x 2 HPUs, 31 days at a 2-minute step): benchmarks/fleet_rules.py uses the same
generator at fleet sizes.
"""

from __future__ import annotations

import re
import shutil

import pytest

import dashboards
from alerts import rules, thresholds
from dashboards import queries
from exporter import catalogue
from tests.support import backfill, fleetdata

# Relative agreement required of totals and ratios. Both sides estimate the same increase from the same samples;
# they differ at the window's edges (increase() extrapolates, the sum starts at an increment boundary) and at
# counter starts (increase() cannot count a new series' first value; a 5-minute increment does the same, per step).
TOLERANCE = 0.01
DAYS, STEP = 31, 120
SEL = 'job="gaudi-exporter"'
NS = "ml-research"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")]


def _thresholds() -> dict:
    t = thresholds.load()
    t["budgets"]["namespaces"] = {NS: {"daily_usd": 1.0, "monthly_usd": 1.0}}
    return thresholds.validate(t)


def _alert_expr(groups: dict, name: str) -> str:
    """The alert's expression without its threshold: the figure it compares."""
    rule = next(r for g in groups["prometheus_alerts.yaml"] for r in g["rules"] if r.get("alert") == name)
    return re.sub(r"\s*>\s*[0-9.e+-]+\s*$", "", rule["expr"])


def _panel_expr(uid: str, title: str, range_s: int) -> str:
    board = next(b for b in dashboards.boards() if b.uid == uid)
    target = next(t for t in queries.panel_targets(board) if t.panel_title == title)
    return queries.expand(target.expr, range_s=range_s)


def _passes(groups: dict) -> list[list[dict]]:
    """The increments group split in two: rules over raw series, then rules over those (see backfill.record)."""
    inc = next(g for g in groups["prometheus_rules.yaml"] if g["name"] == rules.INCREMENTS_GROUP)
    first = [r for r in inc["rules"] if not queries.metric_names(r["expr"]) & set(catalogue.RECORDED)]
    second = [r for r in inc["rules"] if r not in first]
    assert first and second
    return [[{"name": f"{inc['name']}.{i}", "interval": inc["interval"], "rules": rs}]
            for i, rs in enumerate((first, second))]


def _comparisons(groups: dict) -> dict[str, tuple[str, str]]:
    """name -> (expression as it was, expression as it is)."""
    cost, ns_cost = "gaudi_node_cost_usd_total", "gaudi_namespace_cost_usd_total"
    idle, hpu = "gaudi_hpu_idle_cost_usd_total", "gaudi_hpu_cost_usd_total"
    month, week = 30 * 86400, 7 * 86400
    return {
        "daily budget": (f"sum by (cluster) (increase({cost}{{{SEL}}}[1d]))",
                         _alert_expr(groups, "GaudiDailyBudgetExceeded")),
        "monthly budget": (f"sum by (cluster) (increase({cost}{{{SEL}}}[30d]))",
                           _alert_expr(groups, "GaudiMonthlyBudgetExceeded")),
        "daily forecast": (f"sum by (cluster) (increase({cost}{{{SEL}}}[18h])) + "
                           f"sum by (cluster) (rate({cost}{{{SEL}}}[1h])) * 21600",
                           _alert_expr(groups, "GaudiDailyBudgetForecastExceeded")),
        "monthly forecast": (f"sum by (cluster) (increase({cost}{{{SEL}}}[23d])) + "
                             f"sum by (cluster) (rate({cost}{{{SEL}}}[1d])) * {week}",
                             _alert_expr(groups, "GaudiMonthlyBudgetForecastExceeded")),
        "namespace monthly budget": (
            f'sum by (cluster, namespace) (increase({ns_cost}{{{SEL}, namespace="{NS}"}}[30d]))',
            _alert_expr(groups, "GaudiNamespaceMonthlyBudgetExceeded")),
        "idle share 1d by node": (
            f"sum by (cluster, node) (increase({idle}{{{SEL}}}[1d])) / sum by (cluster, node) "
            f"(increase({hpu}{{{SEL}}}[1d]))",
            _alert_expr(groups, "GaudiIdleCostShareHigh")),
        "cost panel: last 30 days": (f"sum(increase({cost}[30d]))",
                                     _panel_expr("gaudi-cost", "Last 30 days", month)),
        "cost panel: spot savings 30d": ("sum(increase(gaudi_spot_savings_usd_total[30d])) or vector(0)",
                                         _panel_expr("gaudi-cost", "Spot savings (range)", month)),
        "cost panel: idle share 30d": (f"sum(increase({idle}[30d])) / sum(increase({hpu}[30d]))",
                                       _panel_expr("gaudi-cost", "Idle share (range)", month)),
        "efficiency panel: busy HPU-hours 30d": ("sum(increase(gaudi_hpu_busy_seconds_total[30d])) / 3600",
                                                 _panel_expr("gaudi-efficiency", "Busy HPU-hours (range)", month)),
        # the recorded idle HPU-seconds (up - busy per node and 5m) the busy/idle panel reads
        "idle HPU-seconds 30d (recorded)": (
            f"sum(sum_over_time(gaudi_hpu_up{{{SEL}}}[30d])) * {STEP}"
            f" - sum(increase(gaudi_hpu_busy_seconds_total{{{SEL}}}[30d]))",
            "sum(sum_over_time(cluster:gaudi_hpu_idle_seconds:sum5m[30d]))"),
    }


def _by_labels(result: list[dict]) -> dict[tuple, float]:
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


def test_long_windows_from_recorded_increments_agree_with_raw_counters(tmp_path, capsys):
    data = fleetdata.generate(tmp_path / "om", nodes=2, hpus=2, days=DAYS, step=STEP, restart_every_hours=4 * 24,
                              move_every_hours=24)
    db = tmp_path / "data"
    backfill.import_openmetrics(data.files, db)
    shutil.rmtree(tmp_path / "om")
    groups = rules.groups(_thresholds())
    assert backfill.record_passes(db, _passes(groups), data.start, data.end, tmp_path / "recorded") >= 2
    at = data.end - 150  # between two increments, as a rule evaluation in Prometheus would be
    worst = {}
    with backfill.serve(db) as prom:
        # the data holds what the test is about
        restarts = backfill.instant(prom, f"count by (cluster, node) (count by (cluster, node, instance) "
                                          f"(count_over_time(up{{{SEL}}}[30d])))", at)[0]
        assert max(float(r["value"][1]) for r in restarts) >= 3, "expected several exporter restarts per node"
        for name, (old_expr, new_expr) in _comparisons(groups).items():
            old = _by_labels(backfill.instant(prom, old_expr, at)[0])
            new = _by_labels(backfill.instant(prom, new_expr, at)[0])
            assert old and set(old) == set(new), f"{name}: label sets differ\n old {old}\n new {new}"
            for labels, v in old.items():
                err = abs(new[labels] - v) / abs(v) if v else abs(new[labels])
                worst[name] = max(worst.get(name, 0.0), err)
                assert err <= TOLERANCE, f"{name} {labels}: old {v} new {new[labels]} ({err:.3%})\n{new_expr}"
    with capsys.disabled():
        print(f"\n{data.samples} samples, {data.series} series; largest relative difference, new vs old:")
        for name, err in worst.items():
            print(f"  {name:40s} {err:.4%}")
