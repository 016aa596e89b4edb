"""Headline panels say what is true: "Spend now" is the price in force, and the ECC panel agrees with its alert.

Each panel's query is expanded as Grafana would send it (dashboards.queries.expand) and evaluated by promtool, a
real Prometheus engine, next to the alert on the same series.
"""

from __future__ import annotations

import subprocess

import yaml

import dashboards
from alerts import build
from dashboards import queries
from tests.test_alerts import FIXTURE_THRESHOLDS, PROMTOOL


def _target(uid: str, title: str) -> queries.Target:
    board = next(b for b in dashboards.boards(FIXTURE_THRESHOLDS) if b.uid == uid)
    return next(t for t in queries.panel_targets(board) if t.panel_title == title)


def _promtool(tmp_path, test: dict) -> subprocess.CompletedProcess:
    assert build.main(["--thresholds", str(FIXTURE_THRESHOLDS), "--out", str(tmp_path / "build")]) == 0
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True,
                          timeout=120)


def test_spend_now_is_the_price_in_force_from_the_first_scrape(tmp_path):
    """19.92 USD/h integrated in 2 s ticks and scraped every 5 s: a short rate() swings (19.56-20.28), a 5m rate
    ramps up from 0 after a start; the headline reads the price gauge."""
    price, tick, scrape, n = 19.92, 2, 5, 200
    cost = " ".join(f"{(i * scrape // tick) * tick * price / 3600:.9f}" for i in range(n))
    labels = 'cluster="prod",job="gaudi-exporter",instance="a:9654"'
    expr = queries.expand(_target("gaudi-cost", "Spend now (USD/h)").expr)
    test = {
        "rule_files": ["build/prometheus_rules.yaml"],
        "evaluation_interval": "5s",
        "tests": [{
            "interval": f"{scrape}s",
            "input_series": [
                {"series": f"gaudi_node_cost_usd_total{{{labels}}}", "values": cost},
                {"series": f'gaudi_node_price_usd_per_hour{{{labels},source="static",lifecycle="on-demand"}}',
                 "values": f"{price}x{n - 1}"},
            ],
            "promql_expr_test": [{"expr": expr, "eval_time": f"{t}s", "exp_samples": [{"labels": "{}",
                                                                                       "value": price}]}
                                 for t in (5, 60, 125, 600, 995)],
        }],
    }
    res = _promtool(tmp_path, test)
    assert res.returncode == 0, f"{expr}\n{res.stdout}{res.stderr}"


def test_uncorrectable_ecc_panel_counts_the_hpus_the_alert_fires_for(tmp_path):
    """A count that was already non-zero when the range began: increase() over the range says 0, the alert fires."""
    expr = queries.expand(_target("gaudi-fleet", "HPUs with uncorrectable ECC").expr, range_s=6 * 3600)
    base = 'job="gaudi-exporter",instance="a:9654"'
    test = {
        "rule_files": ["build/prometheus_alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # HPU 0 held by a pod that moved on: two series (pod labels), the same device and count
                {"series": f'gaudi_hpu_ecc_errors_total{{{base},hpu="0",uuid="U0",pod="p0",type="uncorrected"}}',
                 "values": "3x200"},
                {"series": f'gaudi_hpu_ecc_errors_total{{{base},hpu="0",uuid="U0",pod="p1",type="uncorrected"}}',
                 "values": "3x200"},
                {"series": f'gaudi_hpu_ecc_errors_total{{{base},hpu="1",uuid="U1",type="uncorrected"}}',
                 "values": "0x200"},
            ],
            "promql_expr_test": [
                # the devices the alert fires for (its ALERTS series, one per pod label set)...
                {"expr": 'count(count by (hpu, uuid) (ALERTS{alertname="GaudiHpuEccUncorrectable", '
                         'alertstate="firing"}))', "eval_time": "150m", "exp_samples": [{"labels": "{}", "value": 1}]},
                # ...are what the panel counts
                {"expr": expr, "eval_time": "150m", "exp_samples": [{"labels": "{}", "value": 1}]},
            ],
        }],
    }
    res = _promtool(tmp_path, test)
    assert res.returncode == 0, f"{expr}\n{res.stdout}{res.stderr}"
