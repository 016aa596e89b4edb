"""The dashboards as Grafana would load them: modern JSON, sane layout, every name from the catalogue, build fresh."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

import dashboards
from dashboards import build, queries
from exporter import catalogue

REPO = Path(__file__).resolve().parents[1]
BOARDS = dashboards.boards()
LEGACY_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel", "grafana-worldmap-panel"}
DS_VAR = {"type": "prometheus", "uid": "${datasource}"}
CHAIN = ["cluster", "job", "node", "namespace", "hpu"]


def _panels(board):
    return board.json["panels"]


@pytest.fixture(params=BOARDS, ids=lambda b: b.uid)
def board(request):
    return request.param


def test_four_dashboards_with_unique_uids():
    uids = [b.uid for b in BOARDS]
    assert sorted(uids) == ["gaudi-cost", "gaudi-efficiency", "gaudi-fleet", "gaudi-spot"]
    assert all(b.json["uid"] == b.uid for b in BOARDS)


def test_committed_json_is_what_the_code_builds(board):
    """dashboards/build/*.json are committed; they must match the code (run `gaudi-exporter dashboards build`)."""
    committed = REPO / "dashboards" / "build" / f"{board.uid}.json"
    assert committed.exists(), f"{committed} missing: run python -m dashboards.build"
    assert json.loads(committed.read_text()) == json.loads(build.dashboard_json(board)), \
        f"{committed.name} is out of date: run python -m dashboards.build"


def test_build_check_reports_every_stale_output(monkeypatch):
    monkeypatch.chdir(REPO)  # the defaults are the committed files, relative to a clone's root
    assert build.main(["--check"]) == 0, "generated files are out of date: run python -m dashboards.build"


def test_build_writes_and_check_detects_a_stale_file(tmp_path, capsys):
    out, cms = tmp_path / "out", tmp_path / "cm"
    args = ["--out", str(out), "--configmaps", str(cms)]
    assert build.main(args) == 0
    assert sorted(p.name for p in out.glob("*.json")) == sorted(f"{b.uid}.json" for b in BOARDS)
    assert build.main([*args, "--check"]) == 0
    (out / "gaudi-fleet.json").write_text("{}")
    capsys.readouterr()
    assert build.main([*args, "--check"]) == 1
    assert "gaudi-fleet.json" in capsys.readouterr().err


def test_valid_json_schema_39_and_no_legacy_keys(board):
    data = json.loads(build.dashboard_json(board))
    assert data["schemaVersion"] == 39
    assert data["id"] is None
    for legacy in ("rows", "style", "hideControls", "sharedCrosshair", "gnetId", "__inputs"):
        assert legacy not in data, legacy


def test_panel_ids_unique_and_types_modern(board):
    ids = [p["id"] for p in _panels(board)]
    assert len(ids) == len(set(ids))
    types = {p["type"] for p in _panels(board)}
    assert not types & LEGACY_TYPES
    assert types <= {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "heatmap"}


def test_every_panel_and_target_uses_the_datasource_variable(board):
    for p in _panels(board):
        assert p["datasource"] == DS_VAR, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS_VAR, (p["title"], t["refId"])
            assert t["expr"].strip()
            # grafanalib's legacy target keys are gone
            assert not {"intervalFactor", "step", "target", "metric", "query"} & t.keys(), p["title"]


def test_every_panel_has_a_unit(board):
    known = {"currencyUSD", "percentunit", "watt", "bytes", "celsius", "kwatth", "s", "h", "short",
             "bool_yes_no"}
    for p in _panels(board):
        unit = p["fieldConfig"]["defaults"].get("unit")
        assert unit, p["title"]
        assert unit in known or unit.startswith("suffix:"), (p["title"], unit)


def test_money_and_ratios_use_the_right_units(board):
    for p in _panels(board):
        unit = p["fieldConfig"]["defaults"]["unit"]
        if "USD" in p["title"] or "Spend" in p["title"] or "cost" in p["title"].lower() and "share" not in \
                p["title"]:
            assert unit == "currencyUSD", p["title"]
        if "share" in p["title"].lower() or "Utilisation" in p["title"] or "Efficiency" in p["title"]:
            assert unit == "percentunit", p["title"]


def test_thresholds_are_plain_steps(board):
    for p in _panels(board):
        th = p["fieldConfig"]["defaults"]["thresholds"]
        assert th["mode"] == "absolute"
        assert th["steps"] and th["steps"][0]["value"] is None, p["title"]
        for s in th["steps"]:
            assert set(s) == {"color", "value"}, (p["title"], s)
            assert s["value"] is None or isinstance(s["value"], int | float)
        values = [s["value"] for s in th["steps"][1:]]
        assert values == sorted(values), p["title"]


def test_grafanalib_defects_are_fixed(board):
    for p in _panels(board):
        assert "maxDataPoints" not in p, p["title"]
        assert "fieldOptions" not in p.get("options", {}), p["title"]
        if p["type"] in ("gauge", "bargauge", "stat"):
            assert p["options"]["reduceOptions"]["calcs"], p["title"]
            defaults = p["fieldConfig"]["defaults"]
            assert not {"calcs", "values", "limit"} & defaults.keys(), p["title"]


def test_grid_is_24_columns_and_panels_do_not_overlap(board):
    rects = []
    for p in _panels(board):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        rects.append((p["title"], g))
    for (ta, a), (tb, b) in combinations(rects, 2):
        overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                   and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
        assert not overlap, f"{ta!r} overlaps {tb!r}"


def test_variables_are_chained(board):
    vs = {v["name"]: v for v in board.json["templating"]["list"]}
    assert vs["datasource"]["type"] == "datasource" and vs["datasource"]["query"] == "prometheus"
    for i, name in enumerate(CHAIN):
        v = vs[name]
        assert v["datasource"] == DS_VAR
        assert v["definition"].startswith("label_values(")
        for earlier in CHAIN[:i]:
            assert f"${earlier}" in v["definition"], f"{name} does not filter by ${earlier}"
        # per-HPU boards start on one node, not "All" across the fleet (a 1,000-node fleet is 8,000 series)
        assert v["includeAll"] == (name != "node" or board.uid != "gaudi-fleet"), name
        assert v["allValue"] == ".*"
    assert vs["node"]["definition"].endswith(", instance)")


def test_panel_queries_use_the_variables(board):
    for t in queries.panel_targets(board):
        if "market" in t.expr:  # the market watcher's series are not per node
            assert "$cluster" in t.expr, t.panel_title
            continue
        if "training" in t.expr and "node" not in t.expr:
            continue
        if "gaudi_namespace_cost" in t.expr or "namespace:" in t.expr:
            assert "$namespace" in t.expr and "$cluster" in t.expr
            continue
        if re.search(r"\bcluster:gaudi_\w+:increase5m\b", t.expr):  # windows of days read one series per cluster
            assert "$cluster" in t.expr, t.panel_title
            continue
        # fleet-wide graphs that read only per-cluster recorded series (one series per cluster)
        if all(n.startswith("cluster:") for n in queries.metric_names(t.expr)):
            assert "$cluster" in t.expr, t.panel_title
            continue
        for v in ("cluster", "job", "node"):
            assert f"${v}" in t.expr, (board.uid, t.panel_title, v)


def test_links_between_dashboards_keep_variables_and_time(board):
    links = board.json["links"]
    assert links and all(li["includeVars"] and li["keepTime"] for li in links)
    uids = {b.uid for b in BOARDS}
    for p in _panels(board):
        for dl in p["fieldConfig"]["defaults"].get("links", []):
            m = re.match(r"^/d/([\w-]+)\?(.*)$", dl["url"])
            assert m and m.group(1) in uids, dl["url"]
            query = m.group(2)
            assert "${__url_time_range}" in query
            for v in ["datasource", *CHAIN]:
                assert f"${{{v}:queryparam}}" in query or f"var-{v}=" in query, (p["title"], v)


def test_every_metric_name_is_in_the_catalogue(board):
    known = catalogue.all_names()
    used = set()
    for t in queries.panel_targets(board):
        used |= queries.metric_names(t.expr)
    for _, q in queries.variable_queries(board):
        used |= queries.metric_names(q.replace("label_values(", "(").rsplit(",", 1)[0])
    for _, expr, _ in queries.annotation_exprs(board):
        used |= queries.metric_names(expr)
    assert used, "no metric found: the extractor is broken"
    assert used <= known, f"not in the catalogue: {sorted(used - known)}"


def test_metric_name_extractor_finds_names_not_labels_or_functions():
    expr = ('sum by (instance, hpu) (rate(gaudi_hpu_busy_seconds_total{job=~"$job", hpu="1"}[5m])) / on (instance) '
            'group_left () node:gaudi_hpu_utilization_ratio:avg or vector(0) * time()')
    assert queries.metric_names(expr) == {"gaudi_hpu_busy_seconds_total", "node:gaudi_hpu_utilization_ratio:avg"}


def test_unknown_metric_fails_the_build():
    from dashboards.panels import metric

    with pytest.raises(KeyError, match="gaudi_hpu_bogus"):
        metric("gaudi_hpu_bogus")


def test_budgets_and_targets_come_from_the_thresholds_file(tmp_path):
    data = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())
    data["budgets"]["cluster"]["daily_usd"] = 1234
    data["efficiency"]["floor"] = 0.37
    path = tmp_path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(data))
    by_uid = {b.uid: b for b in dashboards.boards(path)}
    budget = next(p for p in by_uid["gaudi-cost"].json["panels"] if p["title"] == "Budget used")
    assert any(t["expr"].endswith("/ 1234") for t in budget["targets"])
    gauge = next(p for p in by_uid["gaudi-efficiency"].json["panels"] if p["title"] == "Efficiency score")
    assert [s["value"] for s in gauge["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.37]


def test_a_bad_thresholds_file_is_a_clear_error(tmp_path):
    data = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())
    data["efficiency"]["target"] = "high"
    path = tmp_path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(data))
    assert build.main(["--thresholds", str(path), "--out", str(tmp_path / "o"), "--configmaps",
                       str(tmp_path / "c")]) == 2
    assert not (tmp_path / "o").exists()


def test_configmaps_for_the_grafana_sidecar():
    for b in BOARDS:
        path = REPO / "deploy" / "kubernetes" / "base" / "generated" / "dashboards" / f"{b.uid}.yaml"
        cm = yaml.safe_load(path.read_text())
        assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(cm["metadata"]["name"]) <= 63
        (key, text), = cm["data"].items()
        assert key == f"{b.uid}.json"
        assert json.loads(text) == b.json
        assert len(path.read_bytes()) < 256 * 1024  # client-side kubectl apply limit


def test_file_provider_yaml():
    doc = yaml.safe_load((REPO / "dashboards" / "build" / "provisioning" / "gaudi-exporter.yaml").read_text())
    assert doc["apiVersion"] == 1
    (prov,) = doc["providers"]
    assert prov["type"] == "file" and prov["options"]["path"] and prov["allowUiUpdates"] is False


def test_provider_path_points_grafana_at_the_built_json_outside_kubernetes(tmp_path):
    """`dashboards build --provider-path`: the provider reads the JSON where --out wrote it (a plain Grafana
    install), and the datasource file the README and the demo use is one Grafana's provisioning accepts."""
    out = tmp_path / "dashboards"
    assert build.main(["--out", str(out), "--configmaps", str(tmp_path / "cm"), "--provider-path", str(out)]) == 0
    (prov,) = yaml.safe_load((out / "provisioning" / "gaudi-exporter.yaml").read_text())["providers"]
    assert Path(prov["options"]["path"]) == out
    assert {p.stem for p in out.glob("*.json")} == {b.uid for b in BOARDS}
    doc = yaml.safe_load(build.datasource_yaml("http://127.0.0.1:9090"))
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090" and ds["access"] == "proxy"


def test_panels_needing_absent_sources_say_so():
    for b in BOARDS:
        for p in b.json["panels"]:
            needs = b.needs[p["id"]]
            if needs:
                assert "Needs" in p["description"], p["title"]


@pytest.mark.parametrize(("value", "unit", "text"), [
    (19.92, "currencyUSD", "$19.92"), (0.0172, "currencyUSD", "$0.0172"), (0.423, "percentunit", "42.3%"),
    (96 * 1024**3, "bytes", "96.0 GiB"), (1250, "watt", "1.25 kW"), (95, "celsius", "95.0 °C"),
    (3725, "s", "1 h 2 min"), (16.46, "suffix: samples/s", "16.5 samples/s"),
])
def test_render_formats_values_with_their_unit(value, unit, text):
    from dashboards.render import fmt

    assert fmt(value, unit) == text


def test_calendar_panels_run_in_utc_like_the_promql_date_functions(board):
    """now/d and now/M are the browser's midnight unless the dashboard is in UTC, while day_of_month() and hour()
    are UTC: a projection mixing them is off by the browser's offset."""
    calendar = [p for p in _panels(board) if str(p.get("timeFrom", "")).startswith("now/")]
    if not calendar:
        pytest.skip("no calendar-aligned panel")
    assert board.json["timezone"] == "utc"
    for p in calendar:
        assert "UTC" in p["description"], p["title"]
    projected = [p for p in calendar if any("day_of_month()" in t["expr"] for t in p["targets"])]
    assert [p["title"] for p in projected] == ["Projected this month"] and projected[0]["timeFrom"] == "now/M"


def test_no_panel_derives_one_target_from_another(board):
    """Each line of a panel is computed once: no target is another target of the same panel wrapped (`1 - X`)."""
    by_panel: dict[int, list[queries.Target]] = {}
    for t in queries.panel_targets(board):
        by_panel.setdefault(t.panel_id, []).append(t)
    for ts in by_panel.values():
        for a, b in combinations(ts, 2):
            for x, y in ((a, b), (b, a)):
                assert x.expr.strip() not in y.expr, (board.uid, y.panel_title, y.ref, "re-derives", x.ref)


def test_fleet_wide_graphs_read_no_raw_per_hpu_series(board):
    """Graphs of the fleet-wide boards (variables on "All" by default) read recorded series, not every HPU's raw
    samples over their range (16 M samples over 6h at 1,000 nodes); per-HPU detail is on the fleet board, scoped
    to one node."""
    if board.uid == "gaudi-fleet":
        pytest.skip("per-HPU board: starts on one node")
    per_device = {m.name for m in catalogue.METRICS.values() if m.per_device}
    for t in queries.panel_targets(board):
        if t.instant or t.panel_type != "timeseries":
            continue
        assert not queries.metric_names(t.expr) & per_device, (board.uid, t.panel_title, t.ref)


def test_fleet_wide_graphs_of_node_series_step_in_5_minutes(board):
    """Node-level series over "All" nodes: 1,000 series x ~1,000 points is 1 M samples at the default range; these
    graphs read 5-minute rates and ratios or slow gauges (prices), so a 5-minute min interval shows the same and
    reads 4x+ fewer."""
    if board.uid == "gaudi-fleet":
        pytest.skip("per-HPU board: starts on one node")
    for p in board.json["panels"]:
        if p["type"] != "timeseries":
            continue
        for t in p["targets"]:
            # node-level series (recorded or raw); per-cluster/namespace/job series and market prices are few
            per_node = [n for n in queries.metric_names(t["expr"])
                        if not n.startswith(("cluster:", "namespace:", "job:")) and "market" not in n]
            if per_node:
                assert p.get("interval") == "5m", (board.uid, p["title"], per_node)
