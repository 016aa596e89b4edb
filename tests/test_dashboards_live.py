"""Every query of every dashboard, run against a real Prometheus that scrapes the real exporter and market watcher.

Grafana cannot run here, so we do what it would: substitute the template variables and built-in intervals, send each
target to Prometheus' query API, and require an answer with data. Panels marked as needing Kubernetes attribution or
spot notices (absent on a simulated node) only have to parse and run; panels needing a training job get one: a small
prometheus_client exporter whose counters grow while the test runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, start_http_server

import dashboards
from alerts import build
from dashboards import queries
from dashboards.panels import KUBERNETES, SPOT, TRAINING
from exporter import catalogue
from tests.support import procs

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "alerts" / "build").glob("*.yaml"))
MARKET_SAMPLE = REPO / "deploy" / "local" / "sample-spot-price-history.json"
EXPORTER_JOB = "gaudi-exporter"  # the job the recording rules select (alerts/thresholds.yaml exporter_selector)
BOARDS = dashboards.boards()

# Needs the test environment supplies; the rest (Kubernetes, spot) cannot exist on a simulated node.
SUPPLIED = {TRAINING}
# Variables whose values cannot exist here, and why.
EMPTY_VARIABLES = {
    "cluster": "external label: only on series seen through federation, Thanos or remote write",
    "namespace": "Kubernetes attribution is off on a simulated node",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RULES, reason="alerts/build/*.yaml not generated yet (run `gaudi-exporter rules build`)"),
    pytest.mark.skipif(not MARKET_SAMPLE.exists(), reason=f"{MARKET_SAMPLE.name} (market watcher sample) missing"),
]


@contextlib.contextmanager
def training_job(port: int) -> Iterator[str]:
    """A fake training process: gaudi_training_* counters that grow, served by prometheus_client on loopback."""
    reg = CollectorRegistry()
    names = {m: catalogue.get(m) for m in ("gaudi_training_samples_total", "gaudi_training_tokens_total",
                                            "gaudi_training_steps_total")}
    counters = {k: Counter(m.family, m.help, m.labels, registry=reg) for k, m in names.items()}
    stop = threading.Event()

    def grow() -> None:
        while not stop.wait(0.2):
            counters["gaudi_training_samples_total"].labels(job="llama-test").inc(64)
            counters["gaudi_training_tokens_total"].labels(job="llama-test").inc(64 * 2048)
            counters["gaudi_training_steps_total"].labels(job="llama-test").inc()

    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def _has_data(prom: str, expr: str) -> bool:
    try:
        return bool(procs.query(prom, expr))
    except AssertionError:
        return False


@contextlib.contextmanager
def live_stack(tmp: Path, min_seconds: float = 20.0) -> Iterator[tuple[str, str]]:
    """Exporter (simulated) + market watcher + training job, scraped by Prometheus with the recording rules.

    Yields (Prometheus URL, the exporter's instance label) once every recording rule the dashboards use has data.
    """
    ckpt = tmp / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "step-100.pt").write_bytes(b"checkpoint")
    node_args = ["--backend", "simulated", "--pricing.source", "static", "--pricing.static.usd-per-hour", "19.92",
                 "--interval", "1", "--checkpoint.path", str(ckpt / "*.pt")]
    market_args = ["--mode", "market", "--market.source", str(MARKET_SAMPLE), "--interval", "1"]
    # the committed rules, but with 5-second increments so the recorded series the panels read exist within
    # the test (the 5-minute group would take up to 5 minutes to write its first)
    rules_dir = tmp / "rules"
    assert build.main(["--out", str(rules_dir), "--increment-step", "5s"]) == 0
    rules = sorted(rules_dir.glob("prometheus_*.yaml"))
    with procs.exporter(node_args) as (_, node), procs.exporter(market_args) as (_, market), \
            training_job(procs.free_port()) as train:
        node_target = node.split("//", 1)[1]
        targets = {EXPORTER_JOB: [node_target], "gaudi-market": [market.split("//", 1)[1]], "training": [train]}
        with procs.prometheus(tmp / "prom", targets, rule_files=rules) as prom:
            start = time.monotonic()
            used = {r for b in BOARDS for t in queries.panel_targets(b) for r in queries.metric_names(t.expr)
                    if r in catalogue.RECORDED}

            def ready() -> bool:
                return time.monotonic() - start >= min_seconds and all(_has_data(prom, r) for r in used)

            procs.wait_for(ready, timeout=180, interval=1, what=f"recording rules {sorted(used)} to have data")
            yield prom, node_target


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with live_stack(tmp_path_factory.mktemp("live")) as s:
        yield s


def _run(prom: str, expr: str) -> tuple[list | None, str | None]:
    r = requests.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        return None, body.get("error", f"HTTP {r.status_code}")
    return body["data"]["result"], None


def _check(prom: str, board, values: dict[str, str]) -> list[str]:
    problems = []
    for t in queries.panel_targets(board):
        expr = queries.expand(t.expr, values)
        result, error = _run(prom, expr)
        where = f"{board.uid} / {t.panel_title!r} {t.ref}: {expr}"
        if error:
            problems.append(f"{where}\n    error: {error}")
        elif not result and t.needs <= SUPPLIED:
            problems.append(f"{where}\n    returned no data")
    return problems


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_every_panel_query_returns_data_with_all_selected(stack, board):
    prom, _ = stack
    problems = _check(prom, board, {})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_every_panel_query_returns_data_drilled_down_to_one_device(stack, board):
    """What a click from a node to one of its devices shows: the chained variables narrow, data stays."""
    prom, instance = stack
    problems = _check(prom, board, {"job": EXPORTER_JOB, "node": instance, "hpu": "0"})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_variables_list_values_chained(stack, board):
    prom, instance = stack
    chosen = {"job": EXPORTER_JOB, "node": instance}
    for name, q in queries.variable_queries(board):
        expr, label = queries.label_values_as_promql(queries.expand(q, chosen))
        result, error = _run(prom, expr)
        assert error is None, f"{name}: {expr}: {error}"
        values = {r["metric"].get(label, "") for r in result} - {""}
        if name in EMPTY_VARIABLES:
            continue
        assert values, f"variable {name} has no values: {expr}"
        if name == "node":
            assert values == {instance}
        if name == "hpu":
            assert values == {str(i) for i in range(8)}


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_annotations_run(stack, board):
    prom, _ = stack
    for name, expr, needs in queries.annotation_exprs(board):
        result, error = _run(prom, queries.expand(expr))
        assert error is None, f"{name}: {error}"
        assert needs <= {SPOT, KUBERNETES} or result, name


def test_needs_marks_are_honest(stack):
    """A panel marked as needing Kubernetes or spot must really be empty (or an honest zero) here."""
    prom, _ = stack
    for board in BOARDS:
        for t in queries.panel_targets(board):
            if not (t.needs - SUPPLIED):
                continue
            result, error = _run(prom, queries.expand(t.expr))
            assert error is None
            values = {float(r["value"][1]) for r in result}
            assert values <= {0.0}, f"{board.uid} / {t.panel_title!r} is marked {sorted(t.needs)} but has data"


def test_render_draws_every_dashboard_on_its_grid(stack, tmp_path):
    import matplotlib.image

    from dashboards import render

    prom, _ = stack
    assert render.main([prom, "--out", str(tmp_path), "--range", "120"]) == 0
    for b in BOARDS:
        png = tmp_path / f"dashboard-{b.uid}.png"
        img = matplotlib.image.imread(png)
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in b.json["panels"])
        assert img.shape[1] == round(24 * render.COL_IN * 80)
        assert img.shape[0] > rows * render.ROW_IN * 80  # the whole grid plus the header
        assert img.std() > 0.05, f"{png.name} is blank"


def test_render_reports_an_unreachable_prometheus(tmp_path, capsys):
    from dashboards import render

    assert render.main([f"http://127.0.0.1:{procs.free_port()}", "--out", str(tmp_path)]) == 2
    assert "not ready" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
