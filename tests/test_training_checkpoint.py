"""CheckpointManager on real files with real torch: atomic saves, retention, corrupt files, best/latest, cost."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from exporter.training import CheckpointManager  # noqa: E402
from exporter.training.checkpoint_saver import CostMeter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def test_save_and_load_latest_round_trip(tmp_path):
    mgr = CheckpointManager(tmp_path, job="j")
    state = tiny_state(1)
    mgr.save(tiny_state(0), step=10, metrics={"loss": 2.0})
    path = mgr.save(state, step=20, metrics={"loss": 1.5})
    assert path.name == "ckpt-00000001-step000000000020.pt"  # second save, step 20
    ckpt = CheckpointManager(tmp_path, job="j").load_latest()
    assert ckpt.step == 20 and ckpt.metrics == {"loss": 1.5} and ckpt.job == "j"
    assert torch.equal(ckpt.state["model"]["weight"], state["model"]["weight"])
    model = torch.nn.Linear(4, 2)
    model.load_state_dict(ckpt.state["model"])  # usable as a real state dict


def test_keeps_the_newest_n(tmp_path):
    mgr = CheckpointManager(tmp_path, job="j", keep=2)
    for step in range(1, 6):
        mgr.save({"step": torch.tensor(step)}, step=step)
    kept = ["ckpt-00000003-step000000000004.pt", "ckpt-00000004-step000000000005.pt"]
    assert [p.name for p in mgr.checkpoints()] == kept
    assert sorted(os.listdir(tmp_path)) == kept


def test_after_resuming_from_an_older_checkpoint_new_saves_are_kept_and_latest(tmp_path):
    """Steps 100..300 saved, then a rollback to step 100 (a loss spike): the new steps 101.. are lower than the
    abandoned 200 and 300 but newer; retention and load_latest go by save order, not step."""
    mgr = CheckpointManager(tmp_path, job="j", keep=3)
    for step, loss in ((100, 1.0), (200, 5.0), (300, 9.0)):
        mgr.save({"step": torch.tensor(step)}, step=step, metrics={"val_loss": loss})
    resumed = CheckpointManager(tmp_path, job="j", keep=3)
    rollback = resumed.load_best("val_loss")
    assert (rollback.step, rollback.sequence) == (100, 0)
    resumed.save({"step": torch.tensor(101)}, step=101)
    assert resumed.load_latest().step == 101
    resumed.save({"step": torch.tensor(102)}, step=102)
    # newest three by save order: 300 (abandoned but saved third), 101, 102
    assert [int(torch.load(p)["step"]) for p in resumed.checkpoints()] == [300, 101, 102]
    resumed.save({"step": torch.tensor(103)}, step=103)
    assert [int(torch.load(p)["step"]) for p in resumed.checkpoints()] == [101, 102, 103]
    assert CheckpointManager(tmp_path, job="j").load_latest().step == 103


def test_checkpoints_from_before_save_sequences_count_as_older(tmp_path):
    torch.save({"format": "gaudi-exporter-checkpoint/1", "job": "j", "step": 500, "metrics": {}, "cost_usd": None,
                "node_cost_usd_total": None, "saved_at": 1.0, "state": {}}, tmp_path / "ckpt-000000000500.pt")
    mgr = CheckpointManager(tmp_path, job="j", keep=2)
    assert mgr.load_latest().step == 500
    mgr.save({}, step=10)
    mgr.save({}, step=20)
    assert [p.name for p in mgr.checkpoints()] == ["ckpt-00000000-step000000000010.pt",
                                                   "ckpt-00000001-step000000000020.pt"]


def test_truncated_latest_is_skipped_with_a_warning(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, job="j")
    mgr.save({"w": torch.zeros(1000)}, step=1)
    newest = mgr.save({"w": torch.ones(1000)}, step=2)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="exporter.training"):
        ckpt = mgr.load_latest()
    assert ckpt.step == 1 and torch.equal(ckpt.state["w"], torch.zeros(1000))
    assert any(newest.name in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_all_unreadable_gives_none_not_garbage(tmp_path, caplog):
    (tmp_path / "ckpt-000000000001.pt").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"something": "else"}, tmp_path / "ckpt-000000000002.pt")  # a foreign file under our name
    with caplog.at_level(logging.WARNING, logger="exporter.training"):
        assert CheckpointManager(tmp_path, job="j").load_latest() is None
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 2


def test_load_best_by_a_named_metric(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, job="j", keep=10)
    for step, loss, acc in [(1, 0.9, 0.5), (2, 0.4, 0.7), (3, 0.6, 0.9), (4, 0.5, 0.8)]:
        mgr.save({"s": step}, step=step, metrics={"loss": loss, "acc": acc})
    assert mgr.load_best("loss").step == 2
    assert mgr.load_best("acc", mode="max").step == 3
    assert mgr.load_best("missing") is None
    # the best one is damaged: the next best is used, and the log says why
    best = tmp_path / "ckpt-00000001-step000000000002.pt"
    best.write_bytes(best.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="exporter.training"):
        assert mgr.load_best("loss").step == 4
    assert any(best.name in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="mode"):
        mgr.load_best("loss", mode="lowest")


CHILD = textwrap.dedent("""
    import sys, torch
    from exporter.training import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], job="kill-test", keep=3)
    mgr.save({"w": torch.full((4,), 1.0)}, step=1)
    print("saved 1", flush=True)
    mgr.save({"w": torch.ones(96 * 1024 * 1024)}, step=2)  # 384 MiB: a write long enough to be killed in
    print("saved 2", flush=True)
""")


def test_killing_a_save_mid_write_leaves_the_previous_checkpoint_intact(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "saved 1", proc.stderr.read()
        partial = None
        deadline = time.monotonic() + 60
        while partial is None and time.monotonic() < deadline:
            for p in tmp_path.glob(f".ckpt-tmp-{proc.pid}@*.tmp"):
                try:
                    if p.stat().st_size > 1024 * 1024:
                        partial = p
                except FileNotFoundError:
                    pass
            if partial is None:
                time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert partial is not None, "the child never started writing checkpoint 2"
    assert proc.returncode == -signal.SIGKILL
    assert not list(tmp_path.glob("ckpt-*-step000000000002.pt")), "kill landed after the save completed; retry"
    assert partial.exists()  # the interrupted temp file, never listed as a checkpoint
    mgr = CheckpointManager(tmp_path, job="kill-test")
    assert not partial.exists()  # its writer is gone: cleaned up by the next manager
    ckpt = mgr.load_latest()
    assert ckpt.step == 1 and torch.equal(ckpt.state["w"], torch.full((4,), 1.0))


def test_cost_meter_survives_a_counter_reset():
    readings = iter([10.0, 12.0, None, 1.0, 3.0])
    meter = CostMeter(lambda: next(readings))  # baseline 10
    assert meter.sample() == 2.0
    assert meter.sample() == 2.0  # unreachable: the last known total
    assert meter.sample() == 3.0  # exporter restarted at 0 and reached 1
    assert meter.sample() == 5.0


def test_unreachable_exporter_only_logs(tmp_path, caplog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connection refused
        with caplog.at_level(logging.WARNING, logger="exporter.training"):
            mgr = CheckpointManager(tmp_path, job="j", exporter_url=dead, timeout=0.5)
            mgr.save({"x": torch.ones(1)}, step=1)
    ckpt = mgr.load_latest()
    assert ckpt.step == 1 and ckpt.cost_usd is None
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert any("could not report the checkpoint" in r.getMessage() for r in caplog.records)


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, job="j", keep=0)
    with pytest.raises(ValueError, match="step"):
        CheckpointManager(tmp_path, job="j").save({}, step=-1)


def test_a_temp_file_another_process_is_still_writing_is_left_alone(tmp_path):
    """Two managers on one directory (a second job, an evaluation process): starting one must not delete the
    other's save in flight. Only temp files whose writer is gone (or, when it cannot be checked, old ones) go."""
    from exporter.training.checkpoint_saver import STALE_TEMP_SECONDS, _host

    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        live = tmp_path / f".ckpt-tmp-{writer.pid}@{_host()}-abc123.tmp"
        dead = tmp_path / f".ckpt-tmp-{gone.pid}@{_host()}-def456.tmp"
        remote_fresh = tmp_path / ".ckpt-tmp-1@another-host-ghi789.tmp"
        remote_old = tmp_path / ".ckpt-tmp-1@another-host-jkl012.tmp"
        for p in (live, dead, remote_fresh, remote_old):
            p.write_bytes(b"partial")
        old = time.time() - STALE_TEMP_SECONDS - 60
        os.utime(remote_old, (old, old))
        CheckpointManager(tmp_path, job="j")
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        writer.communicate(b"")
    assert left == sorted([live.name, remote_fresh.name])


def test_loading_a_checkpoint_shows_its_time_before_the_next_save(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.training import TrainingMetrics

    CheckpointManager(tmp_path, job="j", clock=lambda: 1_700_000_000.0).save({}, step=5, metrics={"loss": 1.0})
    CheckpointManager(tmp_path, job="j", clock=lambda: 1_700_000_600.0).save({}, step=6, metrics={"loss": 2.0})

    def gauge(tm) -> dict:
        import requests

        text = requests.get(f"http://127.0.0.1:{tm.port}/metrics", timeout=5).text
        return {s.labels["job"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "gaudi_training_checkpoint_last_timestamp_seconds"}

    with TrainingMetrics("j", port=0, addr="127.0.0.1", memory_reader=None, environ={}) as tm:
        assert gauge(tm) == {}
        CheckpointManager(tmp_path, job="j", training_metrics=tm).load_latest()
        assert gauge(tm) == {"j": 1_700_000_600.0}
        CheckpointManager(tmp_path, job="j", training_metrics=tm).load_best("loss")
        assert gauge(tm) == {"j": 1_700_000_000.0}
