"""A real CPU training loop, a real Prometheus and the real node exporter; the advisor and the report read back.

The loop runs two phases with different batch sizes; on a CPU a tiny model's per-step overhead dominates, so the
larger batch processes more samples per second. The test measures samples and wall time per phase itself and
checks the advisor's figures against them (TOL), and that it names the batch size the test found cheaper.
"""

from __future__ import annotations

import base64
import io
import re
import time

import pytest
import requests

torch = pytest.importorskip("torch")

from exporter.advisor import batch_size, precision, report  # noqa: E402
from exporter.training import CheckpointManager, TrainingMetrics  # noqa: E402
from tests.support import procs  # noqa: E402

pytestmark = pytest.mark.slow

JOB = "tiny-mlp"
PRICE = 19.92  # USD/h, the static price the node exporter runs with
PHASES = [(8, 16.0), (256, 16.0)]  # (batch size, seconds)
SEQ = 16  # tokens per synthetic sample
TOL = 0.10  # advisor vs the test's own measurement: scrape edges and 1 s cost ticks over ~15 s phases


def train(tm: TrainingMetrics, ckpt: CheckpointManager) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.randn(4096, 32)
    target = data.sum(dim=1, keepdim=True)
    measured = []
    step = 0
    for bs, seconds in PHASES:
        tm.set_phase(batch_size=bs)
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            i = (step * bs) % (len(data) - bs)
            x, y = data[i:i + bs], target[i:i + bs]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            tm.step(samples=bs, tokens=bs * SEQ)
            n += bs
            step += 1
        wall = time.monotonic() - t0
        measured.append({"batch_size": bs, "samples": n, "seconds": wall, "sps": n / wall})
        saved = ckpt.save({"model": model.state_dict()}, step=step, metrics={"loss": loss.item()})
        measured[-1]["checkpoint"] = saved
    return measured


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    args = ["--backend", "simulated", "--pricing.source", "static", "--pricing.static.usd-per-hour", str(PRICE),
            "--interval", "1"]
    with procs.exporter(args) as (_proc, exporter_url), \
            TrainingMetrics(JOB, batch_size=PHASES[0][0], precision="fp32", model="mlp", port=0,
                            addr="127.0.0.1") as tm:
        targets = {"training": [f"127.0.0.1:{tm.port}"], "gaudi": [exporter_url.split("//")[1]]}
        with procs.prometheus(tmp / "prom", targets) as prom:
            procs.wait_for(lambda: len([r for r in procs.query(prom, "up == 1")]) == 2, 30, what="both targets up")
            ckpt = CheckpointManager(tmp / "ckpt", job=JOB, keep=2, exporter_url=exporter_url, training_metrics=tm)
            t_start = time.time()
            measured = train(tm, ckpt)
            t_end = time.time()
            total = sum(m["samples"] for m in measured)
            procs.wait_for(lambda: [r for r in procs.query(prom, "gaudi_training_samples_total")
                                    if float(r["value"][1]) == total], 10, what="final samples scraped")
            yield {"prom": prom, "measured": measured, "t_start": t_start, "t_end": t_end, "ckpt": ckpt,
                   "tmp": tmp, "total": total, "exporter_url": exporter_url}


def parse_table(text: str, first: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == first)
    rows = {}
    for line in lines[head + 1:]:
        cells = line.split()
        if not cells or not re.fullmatch(r"[\w.-]+", cells[0]) or len(cells) < 7:
            break
        rows[cells[0]] = cells
    return rows


def test_the_loop_really_ran_faster_per_sample_with_the_larger_batch(run):
    small, large = run["measured"]
    assert large["sps"] > 1.5 * small["sps"], run["measured"]  # precondition of the comparison below


def test_advisor_names_the_cheaper_batch_size_and_agrees_with_the_measurement(run, capsys):
    rc = batch_size.main(["--prometheus", run["prom"], "--job", JOB, "--range", "5m", "--samples", "1000000"])
    out, err = capsys.readouterr()
    print(out)
    assert rc == 0, err
    rows = parse_table(out, "batch_size")
    assert set(rows) == {str(bs) for bs, _ in PHASES}
    for m in run["measured"]:
        cells = rows[str(m["batch_size"])]
        intervals, sps, usd_h, usd_sample = int(cells[1]), float(cells[4]), float(cells[5]), float(cells[6])
        assert intervals >= 10
        assert sps == pytest.approx(m["sps"], rel=TOL)
        assert usd_h == pytest.approx(PRICE, rel=TOL)
        assert usd_sample == pytest.approx(PRICE / 3600 / m["sps"], rel=2 * TOL)
        assert float(cells[7]) == pytest.approx(1e6 * PRICE / 3600 / m["sps"], rel=2 * TOL)
    cheaper = max(run["measured"], key=lambda m: m["sps"])["batch_size"]
    assert f"cheapest: batch_size={cheaper} " in out


def test_advisor_refuses_with_too_few_measurements(run, capsys):
    rc = batch_size.main(["--prometheus", run["prom"], "--job", JOB, "--range", "5m", "--min-points", "1000"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "Too few measurements" in err and "8 (" in err and "256 (" in err
    rc = precision.main(["--prometheus", run["prom"], "--job", JOB, "--range", "5m"])
    _, err = capsys.readouterr()
    assert rc == 2 and "need 2 to compare" in err  # the job only ever ran fp32
    rc = batch_size.main(["--prometheus", run["prom"], "--job", "no-such-job", "--range", "5m"])
    _, err = capsys.readouterr()
    assert rc == 2 and "no-such-job" in err


def test_checkpoints_carry_cost_and_reach_the_node_exporter(run):
    ckpt = run["ckpt"]
    first, second = (ckpt._load(m["checkpoint"], map_location="cpu", weights_only=True) for m in run["measured"])
    elapsed = second.saved_at - first.saved_at
    assert second.cost_usd - first.cost_usd == pytest.approx(PRICE / 3600 * elapsed, rel=TOL, abs=PRICE / 3600)
    # the node exporter heard about the last one (its gauge is a unix time; exposition refreshes each tick)

    def exporter_checkpoint_time() -> float | None:
        text = requests.get(run["exporter_url"] + "/metrics", timeout=5).text
        line = next((x for x in text.splitlines() if x.startswith("gaudi_checkpoint_last_timestamp_seconds ")),
                    None)
        value = float(line.split()[-1]) if line else None
        return value if value and abs(value - second.saved_at) < 1.0 else None

    procs.wait_for(exporter_checkpoint_time, 10, what="node exporter reports the last checkpoint's time")
    assert [p.name for p in ckpt.checkpoints()] == [m["checkpoint"].name for m in run["measured"]]


def test_report_run_writes_markdown_and_html_with_charts(run, capsys, tmp_path):
    start, end = run["t_start"], run["t_end"] + 3  # the last scrape lands up to 1 s after the loop ends
    time.sleep(max(0.0, end + 1.5 - time.time()))  # a window that is over, and scraped
    rc = report.main(["--prometheus", run["prom"], "--job", JOB, "--from", str(start), "--to", str(end),
                      "--projected-usd", "0.5", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    print(out)
    assert rc == 0, err
    assert "querying Prometheus [" in err
    md = (tmp_path / f"{JOB}-report.md").read_text()
    assert md.strip() in out
    assert "SIMULATED DATA" in md
    rows = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", md, flags=re.M))
    assert rows["Samples"] == f"{run['total']:,}"
    assert rows["Tokens"] == f"{run['total'] * SEQ:,}"
    total = float(re.match(r"\$([\d.]+)", rows["Total cost"]).group(1))
    # the cost of the window, give or take one scrape interval at each edge
    assert total == pytest.approx(PRICE / 3600 * (end - start), rel=0.03, abs=2 * PRICE / 3600)
    assert "source static" in rows["Price"]
    assert "% of projected" in rows["Actual vs projected"] and rows["Actual vs projected"].find("under") > 0
    html = (tmp_path / f"{JOB}-report.html").read_text()
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(pngs) >= 2
    for data in pngs:
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        from PIL import Image

        assert Image.open(io.BytesIO(raw)).size[0] > 100
