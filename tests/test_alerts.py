"""Rules and alerts: thresholds validation, the committed build, promtool/amtool checks, and Alertmanager routing.

The promtool unit tests (alerts/tests/*.yaml) run against rules built from alerts/tests/fixtures/thresholds.yaml, so
a user changing alerts/thresholds.yaml never breaks them; the committed build is checked against the generator.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from alerts import build, thresholds
from exporter import catalogue
from tests.support import procs

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "alerts"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yaml"))
FIXTURE_THRESHOLDS = ALERTS / "tests" / "fixtures" / "thresholds.yaml"
PROMETHEUSRULE = REPO / "deploy/kubernetes/base/generated/prometheusrule.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
# Series Prometheus itself makes; every other name must come from the catalogue.
PROMETHEUS_BUILTINS = {"up"}


def _run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)


def _rules(path: Path) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def fixture_build(tmp_path_factory) -> Path:
    """Rules built from the unit tests' thresholds, next to copies of alerts/tests/*.yaml (they say build/...)."""
    root = tmp_path_factory.mktemp("unit")
    assert build.main(["--thresholds", str(FIXTURE_THRESHOLDS), "--out", str(root / "build")]) == 0
    for f in UNIT_TESTS:
        shutil.copy(f, root / f.name)
    return root


# ---------------------------------------------------------------------------------------------- thresholds

def _defaults() -> dict:
    return yaml.safe_load((ALERTS / "thresholds.yaml").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "thresholds.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_default_thresholds_load_with_budgets_and_efficiency_for_the_dashboards():
    t = thresholds.load()
    assert t["budgets"]["cluster"]["daily_usd"] == _defaults()["budgets"]["cluster"]["daily_usd"]
    assert 0 < t["efficiency"]["floor"] < t["efficiency"]["target"] <= 1


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda d: d["efficiency"].update(flor=0.3), "efficiency.flor"),
    (lambda d: d.update(budget={}), "budget"),
    (lambda d: d["efficiency"].update(floor="half"), "efficiency.floor"),
    (lambda d: d["efficiency"].update(target=1.5), "efficiency.target"),
    (lambda d: d["budgets"]["daily"].update(window="one day"), "budgets.daily.window"),
    (lambda d: d["budgets"]["cluster"].update(daily_usd=True), "budgets.cluster.daily_usd"),
    (lambda d: d["budgets"]["namespaces"].update({"ml": {"daily_usd": -1}}), "budgets.namespaces.ml.daily_usd"),
    (lambda d: d["budgets"]["namespaces"].update({"ml": {"weekly_usd": 1}}), "budgets.namespaces.ml.weekly_usd"),
    (lambda d: d["spot"].pop("cost_at_risk_max_usd"), "spot.cost_at_risk_max_usd"),
    (lambda d: d.update(exporter_selector="job=gaudi"), "exporter_selector"),
    (lambda d: d["nic"].update(ignore_ports=["x"]), "nic.ignore_ports"),
    (lambda d: d["budgets"]["monthly"].update(forecast_horizon="30d"), "budgets.monthly.forecast_horizon"),
    (lambda d: d["pricing"].pop("on_demand_max_age"), "pricing.on_demand_max_age"),
    # read errors of a lost HPU must not fire before GaudiHpuLost can inhibit them
    (lambda d: d["health"].update(read_errors_for="1m", hpu_lost_for="1m"), "health.read_errors_for"),
])
def test_bad_thresholds_are_rejected_naming_the_key(tmp_path, mutate, key):
    data = _defaults()
    mutate(data)
    with pytest.raises(ValueError, match=re.escape(key)):
        thresholds.load(_write(tmp_path, data))


def test_a_null_budget_removes_its_alerts_and_a_namespace_budget_adds_them(tmp_path):
    data = _defaults()
    data["budgets"]["cluster"]["monthly_usd"] = None
    data["budgets"]["namespaces"] = {"ml-research": {"daily_usd": 1500}}
    out = tmp_path / "out"
    assert build.main(["--thresholds", str(_write(tmp_path, data)), "--out", str(out)]) == 0
    names = {r["alert"]: r for r in _rules(out / "prometheus_alerts.yaml")}
    assert "GaudiMonthlyBudgetExceeded" not in names and "GaudiDailyBudgetExceeded" in names
    assert 'namespace="ml-research"' in names["GaudiNamespaceDailyBudgetExceeded"]["expr"]
    assert "GaudiNamespaceMonthlyBudgetExceeded" not in names


# ---------------------------------------------------------------------------------------------- the build

def test_changing_a_threshold_and_rebuilding_changes_the_alert(tmp_path):
    data = _defaults()
    data["efficiency"]["floor"] = 0.42
    data["efficiency"]["for"] = "45m"
    out = tmp_path / "out"
    assert build.main(["--thresholds", str(_write(tmp_path, data)), "--out", str(out)]) == 0
    rule = next(r for r in _rules(out / "prometheus_alerts.yaml") if r["alert"] == "GaudiEfficiencyBelowFloor")
    assert rule["expr"].endswith("< 0.42") and rule["for"] == "45m"
    assert "floor of 42%" in rule["annotations"]["description"]
    assert (out / "kubernetes" / "prometheusrule.yaml").exists()


def test_build_reports_a_bad_thresholds_file_and_fails(tmp_path, capsys):
    data = _defaults()
    data["idle"]["floor"] = 0.1
    assert build.main(["--thresholds", str(_write(tmp_path, data)), "--out", str(tmp_path / "o")]) == 1
    assert "idle.floor" in capsys.readouterr().err
    assert not (tmp_path / "o" / "prometheus_alerts.yaml").exists()


def test_committed_build_is_up_to_date_with_the_generator(tmp_path):
    out = tmp_path / "build"
    assert build.main(["--thresholds", str(ALERTS / "thresholds.yaml"), "--out", str(out)]) == 0
    committed = {p.name for p in (ALERTS / "build").glob("*.yaml")}
    assert committed == {"prometheus_rules.yaml", "prometheus_alerts.yaml"}
    hint = "out of date: run `gaudi-exporter rules build` (python -m alerts.build) and commit the result"
    for name in committed:
        assert (out / name).read_bytes() == (ALERTS / "build" / name).read_bytes(), f"alerts/build/{name} {hint}"
    assert (out / "kubernetes" / "prometheusrule.yaml").read_bytes() == PROMETHEUSRULE.read_bytes(), \
        f"{PROMETHEUSRULE} {hint}"


def test_prometheusrule_wraps_every_generated_group():
    pr = yaml.safe_load(PROMETHEUSRULE.read_text())
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"
    assert pr["metadata"]["name"] == "gaudi-exporter"
    assert pr["metadata"]["labels"]["app.kubernetes.io/name"] == "gaudi-exporter"
    groups = [g for f in ("prometheus_alerts.yaml", "prometheus_rules.yaml")
              for g in yaml.safe_load((ALERTS / "build" / f).read_text())["groups"]]
    assert pr["spec"]["groups"] == groups


# ---------------------------------------------------------------------------------------------- promtool

def test_promtool_check_rules_on_every_generated_file(tmp_path, fixture_build):
    spec = tmp_path / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump({"groups": yaml.safe_load(PROMETHEUSRULE.read_text())["spec"]["groups"]}))
    files = [*sorted((ALERTS / "build").glob("*.yaml")), spec, *sorted((fixture_build / "build").glob("prom*_*.yaml"))]
    res = _run(PROMTOOL, "check", "rules", *files)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(files)


def test_promtool_unit_tests_pass(fixture_build):
    assert UNIT_TESTS, "no promtool unit tests in alerts/tests"
    res = _run(PROMTOOL, "test", "rules", *[fixture_build / f.name for f in UNIT_TESTS])
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test_and_every_record_an_expr_test(fixture_build):
    fires: set[str] = set()
    silent: set[str] = set()
    exprs: list[str] = []
    for f in UNIT_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for a in case.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
            exprs += [e["expr"] for e in case.get("promql_expr_test", [])]
    alerts = {r["alert"] for r in _rules(fixture_build / "build" / "prometheus_alerts.yaml")}
    records = {r["record"] for r in _rules(fixture_build / "build" / "prometheus_rules.yaml")}
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"
    assert {r for r in records if not any(re.search(rf"(?<![\w:]){re.escape(r)}(?![\w:])", e) for e in exprs)} == set()


def test_the_recording_rules_are_exactly_the_catalogue_s():
    assert {r["record"] for r in _rules(ALERTS / "build" / "prometheus_rules.yaml")} == set(catalogue.RECORDED)


# ---------------------------------------------------------------------------------------------- names and style

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "inf", "nan", "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
             "quantile", "count_values"}


def metric_names(expr: str) -> set[str]:
    """Series names an expression reads (functions, labels, keywords, numbers and durations left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    e = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", "", e)
    tokens = re.findall(r"([A-Za-z_:][\w:]*)(\s*\()?", e)
    return {name for name, call in tokens if not call and name.lower() not in _KEYWORDS}


def test_metric_name_parser_finds_names_and_skips_the_rest():
    expr = ('sum by (cluster, job) (rate(gaudi_node_cost_usd_total{job="x",a=~"b|c"}[5m])) * 3600 / on (job) '
            'group_left () (node:foo:bar > 1e6) unless absent(up{job="x"}) and time() - 0.5')
    assert metric_names(expr) == {"gaudi_node_cost_usd_total", "node:foo:bar", "up"}


def test_every_metric_name_in_the_rules_is_in_the_catalogue():
    known = catalogue.all_names() | PROMETHEUS_BUILTINS
    used: set[str] = set()
    for f in (ALERTS / "build").glob("*.yaml"):
        for r in _rules(f):
            used |= metric_names(r["expr"])
            for text in r.get("annotations", {}).values():
                used |= set(re.findall(r'printf "([A-Za-z_:][\w:]*)\{', text))
    assert "gaudi_hpu_up" in used and "gaudi_spot_interruption_time_seconds" in used
    assert used - known == set()


def test_alerts_follow_the_style_guide_and_link_a_runbook_section():
    runbook = (REPO / "docs" / "runbook.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^#{2,3} (\w+)\s*$", runbook, re.M)}
    base = thresholds.load()["runbook_url"]
    for r in _rules(ALERTS / "build" / "prometheus_alerts.yaml"):
        name = r["alert"]
        assert re.fullmatch(r"Gaudi[A-Z][A-Za-z0-9]+", name), name
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["labels"]["category"] in {"budget", "efficiency", "spot", "health"}
        assert r["annotations"]["summary"] and "{{" not in r["annotations"]["summary"], name
        if name != "GaudiExporterAbsent":  # absence has no value to show
            assert "{{" in r["annotations"]["description"], f"{name} description shows no value"
        url = r["annotations"]["runbook_url"]
        assert url.startswith(base + "#"), name
        assert url.split("#", 1)[1] in anchors, f"docs/runbook.md has no section for {name}"
    interruption = next(r for r in _rules(ALERTS / "build" / "prometheus_alerts.yaml")
                        if r["alert"] == "GaudiSpotInterruptionNotice")
    assert interruption["labels"]["severity"] == "critical" and "for" not in interruption


# ---------------------------------------------------------------------------------------------- Alertmanager

def test_amtool_check_config():
    res = _run(AMTOOL, "check-config", ALERTS / "alertmanager.yaml")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("labels", "receivers"), [
    ({"alertname": "GaudiSpotInterruptionNotice", "severity": "critical", "category": "spot"}, "gaudi-page"),
    ({"alertname": "GaudiHpuLost", "severity": "critical", "category": "health"}, "gaudi-page"),
    ({"alertname": "GaudiDailyBudgetExceeded", "severity": "critical", "category": "budget"},
     "gaudi-page,gaudi-budget"),
    ({"alertname": "GaudiDailyBudgetForecastExceeded", "severity": "warning", "category": "budget"},
     "gaudi-budget"),
    ({"alertname": "GaudiHpuIdle", "severity": "warning", "category": "efficiency"}, "gaudi-team"),
    ({"alertname": "GaudiIdleCostShareHigh", "severity": "info", "category": "efficiency"}, "gaudi-info"),
])
def test_alertmanager_routes_by_severity_and_category(labels, receivers):
    res = _run(AMTOOL, "config", "routes", "test", f"--config.file={ALERTS / 'alertmanager.yaml'}",
               *[f"{k}={v}" for k, v in labels.items()])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == receivers


class Webhook:
    """An Alertmanager webhook receiver on 127.0.0.1 that keeps every notification with its arrival time."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer._lock:
                    outer.received.append((time.monotonic(), self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def firing(self) -> dict[str, tuple[float, set[str], dict]]:
        """alertname -> (first arrival, receiver paths it reached, the alert) for alerts received firing."""
        out: dict[str, tuple[float, set[str], dict]] = {}
        with self._lock:
            for at, path, body in self.received:
                for a in body["alerts"]:
                    if a["status"] == "firing":
                        out.setdefault(a["labels"]["alertname"], (at, set(), a))[1].add(path)
        return out


def alertmanager_config_for_test(webhook_url: str) -> dict:
    """alerts/alertmanager.yaml with every receiver sent to ``webhook_url``/<receiver> and 1s grouping."""
    cfg = copy.deepcopy(yaml.safe_load((ALERTS / "alertmanager.yaml").read_text()))
    for r in cfg["receivers"]:
        assert set(r) <= {"name", "webhook_configs"}, f"receiver {r['name']} would leave the machine in a test"
        for w in r.get("webhook_configs", []):
            w["url"] = f"{webhook_url}/{r['name']}"

    def fast(route: dict) -> None:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
        for child in route.get("routes", []):
            fast(child)

    fast(cfg["route"])
    return cfg


def _post_alerts(am: str, alerts: list[dict]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = [{"labels": a, "annotations": {"summary": "test"}, "startsAt": now} for a in alerts]
    r = requests.post(am + "/api/v2/alerts", json=body, timeout=10)
    assert r.status_code == 200, r.text


def test_alertmanager_inhibits_and_delivers_with_the_shipped_config(tmp_path):
    c = {"cluster": "prod"}
    interruption = {**c, "alertname": "GaudiSpotInterruptionNotice", "severity": "critical", "category": "spot",
                    "instance": "a:9654"}
    risk_same = {**c, "alertname": "GaudiSpotCostAtRiskHigh", "severity": "warning", "category": "spot",
                 "instance": "a:9654"}
    risk_other = {**risk_same, "instance": "b:9654"}
    down = {**c, "alertname": "GaudiExporterDown", "severity": "critical", "category": "health",
            "instance": "c:9654", "job": "gaudi-exporter"}
    lost_same = {**c, "alertname": "GaudiHpuLost", "severity": "critical", "category": "health",
                 "instance": "c:9654", "hpu": "3"}
    lost_other = {**lost_same, "instance": "d:9654"}
    exceeded = {**c, "alertname": "GaudiDailyBudgetExceeded", "severity": "critical", "category": "budget",
                "period": "daily"}
    forecast = {**c, "alertname": "GaudiDailyBudgetForecastExceeded", "severity": "warning",
                "category": "budget", "period": "daily"}
    forecast_monthly = {**forecast, "alertname": "GaudiMonthlyBudgetForecastExceeded", "period": "monthly"}
    suppressed = [risk_same, lost_same, forecast]
    active = [interruption, risk_other, down, lost_other, exceeded, forecast_monthly]
    with Webhook() as hook, procs.alertmanager(tmp_path, alertmanager_config_for_test(hook.url)) as am:
        _post_alerts(am, active + suppressed)

        def states():
            got = requests.get(am + "/api/v2/alerts", timeout=10).json()
            return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["status"]["state"] for a in got}

        def key(a):
            return a["alertname"], a.get("instance", "")

        s = procs.wait_for(lambda: (st := states()) and len(st) == len(active + suppressed) and st,
                           timeout=30, what="alerts in Alertmanager")
        assert {key(a): s[key(a)] for a in suppressed} == {key(a): "suppressed" for a in suppressed}
        assert {key(a): s[key(a)] for a in active} == {key(a): "active" for a in active}
        firing = procs.wait_for(lambda: (f := hook.firing()) and {a["alertname"] for a in active} <= set(f) and f,
                                timeout=30, what="notifications at the webhook")
        assert firing["GaudiSpotInterruptionNotice"][1] == {"/gaudi-page"}
        assert firing["GaudiSpotCostAtRiskHigh"][2]["labels"]["instance"] == "b:9654"
        assert firing["GaudiMonthlyBudgetForecastExceeded"][1] == {"/gaudi-budget"}
