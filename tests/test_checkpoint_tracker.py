"""Last checkpoint time: newest matching file, or the newest time a job reported, whichever is later."""

from __future__ import annotations

import os
import threading

import pytest

from exporter.checkpoint_tracker import CheckpointTracker

NOW = 1_790_000_000.0


def touch(path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ckpt")
    os.utime(path, (mtime, mtime))


def test_nothing_known_is_none(tmp_path):
    assert CheckpointTracker(None).latest(NOW) is None
    assert CheckpointTracker(str(tmp_path / "*.pt")).latest(NOW) is None


def test_newest_matching_file_counts_others_do_not(tmp_path):
    touch(tmp_path / "run" / "step-100.pt", NOW - 3600)
    touch(tmp_path / "run" / "step-200.pt", NOW - 600)
    touch(tmp_path / "run" / "notes.txt", NOW - 10)  # does not match the glob
    tracker = CheckpointTracker(str(tmp_path / "run" / "*.pt"))
    assert tracker.latest(NOW) == NOW - 600
    touch(tmp_path / "run" / "step-300.pt", NOW - 60)  # a new checkpoint appears
    assert tracker.latest(NOW) == NOW - 60


def test_recursive_glob(tmp_path):
    touch(tmp_path / "a" / "b" / "model.ckpt", NOW - 42)
    assert CheckpointTracker(str(tmp_path / "**" / "*.ckpt")).latest(NOW) == NOW - 42


def test_reported_time_and_file_time_take_the_later(tmp_path):
    touch(tmp_path / "c.pt", NOW - 600)
    tracker = CheckpointTracker(str(tmp_path / "*.pt"))
    tracker.record(NOW - 900)  # older than the file
    assert tracker.latest(NOW) == NOW - 600
    tracker.record(NOW - 30)
    assert tracker.latest(NOW) == NOW - 30
    tracker.record(NOW - 5000)  # an out-of-order older report does not move it back
    assert tracker.latest(NOW) == NOW - 30


def test_future_time_is_capped_at_now(tmp_path):
    touch(tmp_path / "c.pt", NOW + 3600)  # clock skew between the job's host and this one
    assert CheckpointTracker(str(tmp_path / "*.pt")).latest(NOW) == NOW


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0, "1790000000", True])
def test_bad_report_is_refused(bad):
    tracker = CheckpointTracker(None)
    with pytest.raises(ValueError, match="checkpoint timestamp"):
        tracker.record(bad)
    assert tracker.latest(NOW) is None


def test_concurrent_reports_keep_the_newest():
    tracker = CheckpointTracker(None)

    def report(base: int) -> None:
        for i in range(500):
            tracker.record(NOW - 100_000 + base + i * 8)

    threads = [threading.Thread(target=report, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.latest(NOW) == NOW - 100_000 + 7 + 499 * 8
