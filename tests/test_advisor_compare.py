"""`advise batch-size` on a real Prometheus holding a job that changed precision as well as batch size: each
precision is compared on its own (batch size changed, the rest held fixed), never pooled.

The series are backfilled with promtool (as a past run would be stored) and read by a real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from exporter import catalogue
from exporter.advisor import batch_size
from tests.support import procs

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs Debian's prometheus (promtool)")

SCRAPE = 5.0
PRICE_USD_PER_S = 10 / 3600
TRAIN = 'exported_job="j",instance="10.0.0.7:9655",job="training"'
NODE = 'instance="10.0.0.7:9654",job="gaudi"'
# (batch size, precision, seconds, samples/s). Within each precision, batch 32 is 1.5x as fast as batch 8, so 1.5x
# cheaper per sample. Batch 8 ran mostly in bf16 and batch 32 mostly in fp32: pooled over precisions batch 8 looks
# faster (267 vs 200 samples/s), the wrong winner.
PHASES = [(8, "bf16", 300, 300.0), (32, "bf16", 60, 450.0), (8, "fp32", 60, 100.0), (32, "fp32", 300, 150.0)]


def openmetrics(t0: float) -> tuple[str, float]:
    info, samples, cost = [], [], []
    t, total = t0, 0.0
    for i, (bs, precision, seconds, sps) in enumerate(PHASES):
        labels = f'{TRAIN},batch_size="{bs}",model="m",precision="{precision}"'
        for k in range(int(seconds / SCRAPE) + (1 if i == len(PHASES) - 1 else 0)):
            info.append((labels, t, 1.0))
            samples.append((t, total))
            cost.append((t, (t - t0) * PRICE_USD_PER_S))
            if k < int(seconds / SCRAPE):
                t += SCRAPE
                total += sps * SCRAPE
    out = []
    name = catalogue.get("gaudi_training_info").name
    out.append(f"# TYPE {name} gauge")
    by_series: dict[str, list] = {}
    for labels, ts, v in info:
        by_series.setdefault(labels, []).append((ts, v))
    for labels, pts in by_series.items():
        out += [f"{name}{{{labels}}} {v} {ts:.3f}" for ts, v in pts]
    for family, metric, series, pts in (("gaudi_training_samples", "gaudi_training_samples_total", TRAIN, samples),
                                        ("gaudi_node_cost_usd", "gaudi_node_cost_usd_total", NODE, cost)):
        out.append(f"# TYPE {family} counter")
        out += [f"{catalogue.get(metric).name}{{{series}}} {v} {ts:.3f}" for ts, v in pts]
    return "\n".join(out) + "\n# EOF\n", t


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("advisor-compare")
    text, end = openmetrics(time.time() - 3 * 3600)
    (tmp / "series.om").write_text(text)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp / "series.om"),
                    str(tmp / "prom" / "data")], check=True, capture_output=True)
    with procs.prometheus(tmp / "prom", {}) as url:
        yield url, end


def test_batch_size_is_compared_within_each_precision_not_pooled(prom, capsys):
    url, end = prom
    rc = batch_size.main(["--prometheus", url, "--job", "j", "--end", f"{end + 1:.3f}", "--range", "20m"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for precision in ("bf16", "fp32"):
        assert f"compared: batch_size, with the other settings held fixed: precision={precision}, model=m\n" in out
        assert (f"(1.50x cheaper than batch_size=8), with precision={precision}, model=m held fixed\n") in out, out
    assert out.count("cheapest: batch_size=32 ") == 2, out
    assert "cheapest: batch_size=8 " not in out, out


def test_json_names_what_was_held_fixed(prom, capsys):
    url, end = prom
    assert batch_size.main(["--prometheus", url, "--job", "j", "--end", f"{end + 1:.3f}", "--range", "20m",
                            "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = {c["held_fixed"]["precision"]: c for c in summary["comparisons"]}
    assert set(got) == {"bf16", "fp32"}
    for c in got.values():
        assert c["cheapest"] == "32"
        sps = {r["batch_size"]: r["samples_per_second"] for r in c["rows"]}
        assert sps["32"] / sps["8"] == pytest.approx(1.5, rel=0.01)


def test_advise_precision_holds_the_batch_size_fixed(prom, capsys):
    """The same engine the other way round: precision compared at batch 8 and at batch 32, each on its own."""
    from exporter.advisor import precision

    url, end = prom
    assert precision.main(["--prometheus", url, "--job", "j", "--end", f"{end + 1:.3f}", "--range", "20m"]) == 0
    out = capsys.readouterr().out
    assert "held fixed: batch_size=8, model=m\n" in out and "held fixed: batch_size=32, model=m\n" in out
    # precision compared at batch 8 and at batch 32 separately: bf16 is 3x cheaper in both
    assert out.count("cheapest: precision=bf16 ") == 2 and "(3.00x cheaper than precision=fp32)" in out
