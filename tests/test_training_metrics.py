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
    kw.setdefault("environ", {})  # a single process, whatever launched pytest
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


RANK_CHILD = """
import sys
from exporter.training import TrainingMetrics
tm = TrainingMetrics("ddp", batch_size=4, port=int(sys.argv[1]), addr="127.0.0.1", memory_reader=None)
tm.start()
tm.step(samples=4 * 3)  # the global samples of the step: batch 4 x world size 3
print("served" if tm.active else "idle", flush=True)
sys.stdin.read()  # keep serving until the test has scraped
tm.close()
"""


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_only_local_rank_0_of_several_processes_on_one_port_serves(launcher):
    """Three ranks of one pod, one port: before ranks were read, ranks 1 and 2 died with EADDRINUSE."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    procs = []
    try:
        for rank in range(3):
            if launcher == "torchrun":
                env = {"LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": "3"}
            else:
                env = {"OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_RANK": str(rank),
                       "OMPI_COMM_WORLD_SIZE": "3"}
            clean = {k: v for k, v in os.environ.items() if k not in {"LOCAL_RANK", "RANK", "WORLD_SIZE"}}
            procs.append(subprocess.Popen([sys.executable, "-c", RANK_CHILD, str(port)], cwd=repo, text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env={**clean, **env, "PYTHONPATH": str(repo)}))
        said = [p.stdout.readline().strip() for p in procs]
        assert said == ["served", "idle", "idle"], [p.stderr.read() for p in procs if p.poll() is not None]
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        for p in procs:
            p.communicate("", timeout=30)
    assert [p.returncode for p in procs] == [0, 0, 0]
    samples = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "gaudi_training_samples_total"}
    assert samples == {(("job", "ddp"),): 12.0}


def test_other_ranks_are_no_ops_that_log_once(caplog):
    caplog.set_level(logging.INFO, logger="exporter.training")
    with make(job="j", environ={"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2"}) as rank0:
        rank1 = TrainingMetrics("j", 1, port=rank0.port, addr="127.0.0.1", memory_reader=None,
                                environ={"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"})
        rank1.start()  # the port is rank 0's: binding it would raise
        for _ in range(3):
            rank1.step(samples=2)
        rank1.record_checkpoint(1.0)
        rank1.set_phase(batch_size=8)
        rank1.close()
        rank0.step(samples=2)
        _, s = scrape(rank0)
    assert (rank0.active, rank1.active) == (True, False)
    assert rank1.batch_size == 8
    assert series(s, "gaudi_training_samples_total") == {(("job", "j"),): 2.0}
    assert not series(s, "gaudi_training_checkpoint_last_timestamp_seconds")
    said = [r for r in caplog.records if "local rank 1" in r.getMessage()]
    assert len(said) == 1 and "neither serves nor records" in said[0].getMessage()


def test_ranks_come_from_torchrun_or_open_mpi_and_the_serving_rank_is_configurable():
    from exporter.training.metrics import Ranks, ranks_from_env

    assert ranks_from_env({}) == Ranks(0, 0, 1)
    assert ranks_from_env({"LOCAL_RANK": "2", "RANK": "10", "WORLD_SIZE": "16"}) == Ranks(2, 10, 16)
    ompi = {"OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_RANK": "11", "OMPI_COMM_WORLD_SIZE": "16"}
    assert ranks_from_env(ompi) == Ranks(3, 11, 16)
    assert ranks_from_env({"RANK": "5", "WORLD_SIZE": "8"}) == Ranks(5, 5, 8)  # no local rank: one host
    tm = make(job="j", environ=ompi)
    assert not tm.active and not tm.is_main
    assert make(job="j", environ=ompi, serve_local_rank=3).active
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        ranks_from_env({"LOCAL_RANK": "zero"})
    with pytest.raises(ValueError, match="OMPI_COMM_WORLD_SIZE"):
        ranks_from_env({"OMPI_COMM_WORLD_SIZE": "0"})
    with pytest.raises(ValueError, match="serve_local_rank"):
        make(job="j", serve_local_rank=-1)
