"""Cost-aware checkpoints: atomic torch.save, retention, and the cost accrued so far in each checkpoint.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the final
name, so a crash mid-write leaves the previous checkpoint intact. Each one records the step, the caller's
metrics and the cost the job accrued (from the node exporter's gaudi_node_cost_usd_total on loopback), and
the node exporter is told that a checkpoint landed so its cost-at-risk gauge restarts from zero. torch is
imported only when needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue

if TYPE_CHECKING:
    from exporter.training.metrics import TrainingMetrics

log = logging.getLogger(__name__)

FORMAT = "gaudi-exporter-checkpoint/1"
NODE_COST = catalogue.get("gaudi_node_cost_usd_total").name
CHECKPOINT_API = "/api/v1/checkpoint"


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("CheckpointManager needs torch: pip install 'gaudi-exporter[training]'") from e
    return torch


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    metrics: dict[str, float]
    # job cost accrued up to this checkpoint (None: the node exporter was never reachable)
    cost_usd: float | None
    node_cost_usd_total: float | None  # the raw node counter at save time, for audits
    saved_at: float
    job: str
    state: Any = field(repr=False)


class ExporterClient:
    """Talks to the node exporter on loopback: reads its cost counter, reports checkpoints. Never raises."""

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def node_cost(self) -> float | None:
        url = self.base_url + "/metrics"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                text = resp.read().decode("utf-8", errors="replace")
        except (OSError, urllib.error.URLError) as e:
            log.warning("node exporter %s unreachable (%s): checkpoint cost not updated", url, e)
            return None
        try:
            total = None
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == NODE_COST:
                        total = (total or 0.0) + sample.value
        except ValueError as e:
            log.warning("node exporter %s: unparsable exposition (%s)", url, e)
            return None
        if total is None:
            log.warning("node exporter %s exposes no %s", url, NODE_COST)
        return total

    def report_checkpoint(self, timestamp: float, job: str) -> bool:
        url = self.base_url + CHECKPOINT_API
        body = json.dumps({"timestamp": timestamp, "job": job}).encode()
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                if resp.status in (200, 204):
                    return True
                log.warning("node exporter %s answered HTTP %d to a checkpoint report", url, resp.status)
        except (OSError, urllib.error.URLError) as e:
            log.warning("could not report the checkpoint to %s: %s", url, e)
        return False


class CostMeter:
    """Job cost from a node cost counter that may reset (exporter restart): sums the increases it sees."""

    def __init__(self, read: Callable[[], float | None], carried: float = 0.0) -> None:
        self._read = read
        self._last: float | None = None
        self.carried = carried
        self.accrued = 0.0
        self.known = False
        self.node_total: float | None = None
        self.sample()

    def sample(self) -> float | None:
        value = self._read()
        if value is None:
            return self.total if self.known else None
        if self._last is not None:
            self.accrued += value - self._last if value >= self._last else value  # reset: count from zero
        self._last = value
        self.known = True
        self.node_total = value
        return self.total

    @property
    def total(self) -> float:
        return self.carried + self.accrued


class CheckpointManager:
    """Saves, prunes and loads checkpoints of one job in one directory (one manager per directory)."""

    def __init__(self, directory: str | os.PathLike[str], job: str, *, keep: int = 3,
                 exporter_url: str | None = None, training_metrics: TrainingMetrics | None = None,
                 prefix: str = "ckpt", clock: Callable[[], float] = time.time, timeout: float = 2.0) -> None:
        if keep < 1:
            raise ValueError(f"CheckpointManager: 'keep' must be >= 1, got {keep}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"CheckpointManager: 'prefix' must be a plain file name part, got {prefix!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.job = job
        self.keep = keep
        self.prefix = prefix
        self._clock = clock
        self._metrics = training_metrics
        self._exporter = ExporterClient(exporter_url, timeout) if exporter_url else None
        self._cost = CostMeter(self._exporter.node_cost if self._exporter else (lambda: None))
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.pt$")
        self._remove_stale_temp_files()

    # --- saving
    def save(self, state: Any, step: int, metrics: dict[str, float] | None = None) -> Path:
        """Write the checkpoint atomically, prune old ones, then tell the node exporter; returns the path."""
        torch = _torch()
        if step < 0:
            raise ValueError(f"CheckpointManager.save: 'step' must be >= 0, got {step}")
        metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
        cost = self._cost.sample()
        saved_at = self._clock()
        payload = {"format": FORMAT, "job": self.job, "step": int(step), "metrics": metrics, "cost_usd": cost,
                   "node_cost_usd_total": self._cost.node_total, "saved_at": saved_at, "state": state}
        final = self.directory / f"{self.prefix}-{step:012d}.pt"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{self.prefix}-{step:012d}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_directory()
        self._prune()
        if self._metrics is not None:
            self._metrics.record_checkpoint(saved_at)
            self._metrics.mark()  # the save is not part of the next step's duration
        if self._exporter is not None:
            self._exporter.report_checkpoint(saved_at, self.job)
        log.info("checkpoint %s saved (step %d, job cost %s USD)", final.name, step,
                 "unknown" if cost is None else f"{cost:.4f}")
        return final

    # --- listing and loading
    def checkpoints(self) -> list[Path]:
        """Final checkpoint files, oldest step first (temp files of an interrupted save are not listed)."""
        found = []
        for p in self.directory.iterdir():
            m = self._pattern.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def load_latest(self, *, map_location: Any = "cpu", weights_only: bool = True,
                    resume_cost: bool = True) -> Checkpoint | None:
        """The newest checkpoint that loads; unreadable ones are skipped with a warning."""
        for path in reversed(self.checkpoints()):
            ckpt = self._load(path, map_location=map_location, weights_only=weights_only)
            if ckpt is not None:
                if resume_cost:
                    self.resume(ckpt)
                return ckpt
        return None

    def load_best(self, metric: str, mode: str = "min", *, map_location: Any = "cpu",
                  weights_only: bool = True, resume_cost: bool = False) -> Checkpoint | None:
        """The loadable checkpoint with the lowest (mode='min') or highest (mode='max') ``metric``."""
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager.load_best: 'mode' must be 'min' or 'max', got {mode!r}")
        candidates = []
        for path in self.checkpoints():
            head = self._load(path, map_location="cpu", weights_only=weights_only, mmap=True)
            if head is None:
                continue
            if metric not in head.metrics:
                log.info("checkpoint %s has no metric %r; not a candidate", path.name, metric)
                continue
            value = head.metrics[metric]
            candidates.append((value if mode == "min" else -value, -head.step, path))
        for _, _, path in sorted(candidates):
            ckpt = self._load(path, map_location=map_location, weights_only=weights_only)
            if ckpt is not None:
                if resume_cost:
                    self.resume(ckpt)
                return ckpt
        return None

    def resume(self, ckpt: Checkpoint) -> None:
        """Carry the cost a resumed run had accrued, so later checkpoints hold the job's whole cost."""
        if ckpt.cost_usd is not None:
            self._cost.carried = ckpt.cost_usd - self._cost.accrued

    @property
    def cost_usd(self) -> float | None:
        return self._cost.total if self._cost.known else None

    # --- internals
    def _load(self, path: Path, *, map_location: Any, weights_only: bool,
              mmap: bool = False) -> Checkpoint | None:
        torch = _torch()
        try:
            payload = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
        except Exception as e:  # truncated, corrupt, or written by something else: never silently used
            log.warning("checkpoint %s cannot be loaded (%s: %s); skipped", path, type(e).__name__, e)
            return None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            log.warning("checkpoint %s is not a %s file; skipped", path, FORMAT)
            return None
        try:
            return Checkpoint(path=path, step=int(payload["step"]), metrics=dict(payload["metrics"]),
                              cost_usd=payload.get("cost_usd"),
                              node_cost_usd_total=payload.get("node_cost_usd_total"),
                              saved_at=float(payload["saved_at"]), job=str(payload["job"]),
                              state=payload["state"])
        except (KeyError, TypeError, ValueError) as e:
            log.warning("checkpoint %s lacks field %s; skipped", path, e)
            return None

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
                log.info("checkpoint %s removed (keep=%d)", old.name, self.keep)

    def _fsync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        for p in self.directory.glob(f".{self.prefix}-*.tmp"):
            log.warning("removing %s, left by an interrupted checkpoint save", p.name)
            with contextlib.suppress(OSError):
                p.unlink()

