"""When did the training job last save its work? Newest checkpoint file, or the newest time it reported.

Cost at risk is the node cost since this time: what a spot interruption would throw away.
"""

from __future__ import annotations

import glob as _glob
import math
import os
import threading


class CheckpointTracker:
    def __init__(self, glob: str | None) -> None:
        self.pattern = glob or None
        self._reported: float | None = None
        self._lock = threading.Lock()

    def record(self, ts: float) -> None:
        """A job reported a checkpoint at ``ts`` (POST /api/v1/checkpoint); ValueError on a bad time."""
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts <= 0:
            raise ValueError(f"checkpoint timestamp must be a positive unix time, got {ts!r}")
        with self._lock:
            if self._reported is None or ts > self._reported:
                self._reported = float(ts)

    def newest_file_mtime(self) -> float | None:
        if not self.pattern:
            return None
        newest: float | None = None
        for path in _glob.iglob(self.pattern, recursive=True):
            try:
                m = os.stat(path).st_mtime
            except OSError:  # deleted between listing and stat (checkpoint rotation)
                continue
            if newest is None or m > newest:
                newest = m
        return newest

    def latest(self, now: float) -> float | None:
        """The newest checkpoint time, capped at ``now``: a skewed future mtime must not make risk < 0."""
        with self._lock:
            reported = self._reported
        times = [t for t in (self.newest_file_mtime(), reported) if t is not None]
        if not times:
            return None
        return min(max(times), now)
