"""TrainingMetrics served over real HTTP on loopback, read back the way Prometheus reads it (no torch needed)."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue
from exporter.training import TrainingMetrics, hpu_memory

FAKES = Path(__file__).parent / "fakes"
GIB = 1024**3


def scrape(tm: TrainingMetrics) -> tuple[str, dict[tuple[str, tuple], float]]:
    text = requests.get(f"http://127.0.0.1:{tm.port}/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, out


def series(samples: dict, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def fake_habana(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    for mod in [m for m in sys.modules if m.startswith("habana_frameworks")]:
        monkeypatch.delitem(sys.modules, mod)
    hpu = importlib.import_module("habana_frameworks.torch.hpu")
    assert hpu.__file__.startswith(str(FAKES))
    hpu.fake_reset()
    yield hpu
    for mod in [m for m in sys.modules if m.startswith("habana_frameworks")]:
        del sys.modules[mod]


@pytest.fixture
def no_habana(monkeypatch):
    if importlib.util.find_spec("habana_frameworks") is not None:
        pytest.skip("a real habana_frameworks is installed here")
    monkeypatch.setattr(hpu_memory, "_reported", set())


def make(**kw) -> TrainingMetrics:
    kw.setdefault("memory_reader", None)
    return TrainingMetrics(port=0, addr="127.0.0.1", **kw)


def test_steps_samples_tokens_and_info_are_exposed():
    with make(job="llama-ft", batch_size=4, precision="bf16", model="tiny") as tm:
        for _ in range(3):
            tm.step(samples=4, tokens=100)
        tm.step()  # samples default to the batch size
        _, s = scrape(tm)
    job = (("job", "llama-ft"),)
    assert series(s, "gaudi_training_samples_total") == {job: 16.0}
    assert series(s, "gaudi_training_tokens_total") == {job: 300.0}
    assert series(s, "gaudi_training_steps_total") == {job: 4.0}
    assert series(s, "gaudi_training_step_duration_seconds_count") == {job: 4.0}
    info = series(s, "gaudi_training_info")
    assert info == {(("batch_size", "4"), ("job", "llama-ft"), ("model", "tiny"), ("precision", "bf16")): 1.0}


def test_server_stops_on_exit():
    with make(job="j") as tm:
        port = tm.port
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_phase_change_replaces_the_info_series_and_keeps_counting():
    with make(job="j", batch_size=8, precision="fp32") as tm:
        tm.step(samples=8)
        tm.set_phase(batch_size=32, precision="bf16")
        tm.step(samples=32)
        _, s = scrape(tm)
    info = series(s, "gaudi_training_info")
    assert list(info) == [(("batch_size", "32"), ("job", "j"), ("model", ""), ("precision", "bf16"))]
    assert series(s, "gaudi_training_samples_total") == {(("job", "j"),): 40.0}


def test_exposition_is_promtool_clean_and_uses_catalogue_names(fake_habana):
    with TrainingMetrics("j", 2, "bf16", port=0, addr="127.0.0.1") as tm:
        tm.step(tokens=5)
        tm.record_checkpoint(1_700_000_000.0)
        text, s = scrape(tm)
    training = {m.name for m in catalogue.METRICS.values() if m.group is catalogue.Group.TRAINING}
    exposed = {n for n, _ in s} - {"gaudi_training_step_duration_seconds_bucket",
                                   "gaudi_training_step_duration_seconds_count",
                                   "gaudi_training_step_duration_seconds_sum",
                                   "gaudi_training_step_duration_seconds_created"}
    exposed = {n for n in exposed if not n.endswith("_created")} | {"gaudi_training_step_duration_seconds"}
    assert exposed == training
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_bad_input_names_the_field():
    tm = make(job="j")
    with pytest.raises(ValueError, match="samples"):
        tm.step(samples=-1)
    with pytest.raises(ValueError, match="samples"):
        tm.step()  # no batch size to default to
    with pytest.raises(ValueError, match="job"):
        make(job="")


def test_without_habana_the_rest_works_and_the_log_says_so_once(no_habana, caplog):
    caplog.set_level(logging.WARNING, logger="exporter.training")
    with TrainingMetrics("a", 1, port=0, addr="127.0.0.1") as tm:
        tm.step()
        _, s = scrape(tm)
    with TrainingMetrics("b", 1, port=0, addr="127.0.0.1") as tm2:
        tm2.step()
    said = [r for r in caplog.records if "habana_frameworks.torch.hpu" in r.getMessage()]
    assert len(said) == 1
    assert series(s, "gaudi_training_samples_total") == {(("job", "a"),): 1.0}
    assert not series(s, "gaudi_training_hpu_memory_allocated_bytes")


def test_hpu_memory_comes_from_habana_frameworks(fake_habana, caplog):
    with TrainingMetrics("j", 1, port=0, addr="127.0.0.1") as tm:
        fake_habana.fake_allocate(3 * GIB)
        tm.step()
        fake_habana.fake_free(2 * GIB)
        tm.step()
        _, s = scrape(tm)
        assert series(s, "gaudi_training_hpu_memory_allocated_bytes") == {(("job", "j"),): 1.0 * GIB}
        assert series(s, "gaudi_training_hpu_memory_max_allocated_bytes") == {(("job", "j"),): 3.0 * GIB}
        # a driver error keeps the last values and never breaks the training step
        fake_habana.fake_fail("synStatus 26 [Device not found]")
        tm.step()
        tm.step()
        _, s = scrape(tm)
    assert series(s, "gaudi_training_hpu_memory_allocated_bytes") == {(("job", "j"),): 1.0 * GIB}
    assert series(s, "gaudi_training_steps_total") == {(("job", "j"),): 4.0}
    assert sum("Device not found" in r.getMessage() for r in caplog.records) == 1


def test_memory_stats_is_used_when_the_direct_calls_are_missing(fake_habana):
    only_stats = types.SimpleNamespace(memory_stats=fake_habana.memory_stats)
    fake_habana.fake_allocate(5 * GIB)
    fake_habana.fake_free(1 * GIB)
    reading = hpu_memory.HabanaMemoryReader(only_stats).read()
    assert reading == hpu_memory.MemoryReading(4 * GIB, 5 * GIB)
