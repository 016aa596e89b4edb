"""The last checkpoint a training job reported: a touched file (newest mtime) or POST /api/v1/checkpoint."""

from __future__ import annotations


class CheckpointCollector:
    name = "checkpoint"

    def __init__(self, tracker: object) -> None:
        self.tracker = tracker  # exporter.checkpoint_tracker.CheckpointTracker

    def collect(self, now: float, partial: dict | None = None) -> float | None:
        return self.tracker.latest(now)
