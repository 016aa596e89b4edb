"""Cost-aware checkpoints: atomic torch.save, retention, and the cost accrued so far in each checkpoint.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed over the final
name, so a crash mid-write leaves the previous checkpoint intact. Each one records the step, the caller's
metrics and the cost the job accrued (from the node exporter's gaudi_node_cost_usd_total on loopback), and
the node exporter is told that a checkpoint landed so its cost-at-risk gauge restarts from zero. torch is
imported only when needed.

"Latest" means last saved, not highest step: a run resumed from an older checkpoint saves lower steps than the
abandoned ones it left behind, so every file name carries a save sequence number (``ckpt-<seq>-step<step>.pt``)
and retention and ``load_latest`` go by it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
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
# A temp file whose writer cannot be checked (another host, an old name) is only removed when this old: no save
# of a healthy process takes that long.
STALE_TEMP_SECONDS = 6 * 3600.0


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("CheckpointManager needs torch: pip install '.[training]' in a gaudi-exporter clone") from e
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
    sequence: int = -1  # save order in its directory (-1: a file from before sequence numbers)


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


def announce_checkpoint(timestamp: float, job: str, metrics: TrainingMetrics | None,
                        exporter: ExporterClient | None) -> None:
    """What follows every checkpoint, whoever saved it: the training gauge, the step timer, the node exporter."""
    if metrics is not None:
        metrics.record_checkpoint(timestamp)
        metrics.mark()  # the save is not part of the next step's duration
    if exporter is not None:
        exporter.report_checkpoint(timestamp, job)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


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
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-step(\d+)\.pt$")
        self._legacy = re.compile(rf"^{re.escape(prefix)}-(\d+)\.pt$")  # ckpt-<step>.pt, before sequences
        self._temp = re.compile(rf"^\.{re.escape(prefix)}-tmp-(\d+)@(.+)-[^-]*\.tmp$")
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
        listed = self._listed()
        sequence = max((seq for seq, _, _ in listed), default=-1) + 1
        final = self.directory / f"{self.prefix}-{sequence:08d}-step{step:012d}.pt"
        # the writer's pid and host in the name: another manager only removes it once that process is gone
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{self.prefix}-tmp-{os.getpid()}@{_host()}-",
                                   suffix=".tmp")
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
        announce_checkpoint(saved_at, self.job, self._metrics, self._exporter)
        log.info("checkpoint %s saved (step %d, job cost %s USD)", final.name, step,
                 "unknown" if cost is None else f"{cost:.4f}")
        return final

    # --- listing and loading
    def checkpoints(self) -> list[Path]:
        """Final checkpoint files, oldest save first (temp files of an interrupted save are not listed)."""
        return [p for _, _, p in self._listed()]

    def _listed(self) -> list[tuple[int, int, Path]]:
        """(save sequence, step, path) oldest save first; files from before sequences count as older, by step."""
        found = []
        for p in self.directory.iterdir():
            if not p.is_file():
                continue
            if m := self._pattern.match(p.name):
                found.append((int(m.group(1)), int(m.group(2)), p))
            elif m := self._legacy.match(p.name):
                found.append((-1, int(m.group(1)), p))
        return sorted(found)

    def load_latest(self, *, map_location: Any = "cpu", weights_only: bool = True,
                    resume_cost: bool = True) -> Checkpoint | None:
        """The last saved checkpoint that loads; unreadable ones are skipped with a warning."""
        for path in reversed(self.checkpoints()):
            ckpt = self._load(path, map_location=map_location, weights_only=weights_only)
            if ckpt is not None:
                self._loaded(ckpt, resume_cost)
                return ckpt
        return None

    def load_best(self, metric: str, mode: str = "min", *, map_location: Any = "cpu",
                  weights_only: bool = True, resume_cost: bool = False) -> Checkpoint | None:
        """The loadable checkpoint with the lowest (mode='min') or highest (mode='max') ``metric``."""
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager.load_best: 'mode' must be 'min' or 'max', got {mode!r}")
        candidates = []
        for order, path in enumerate(self.checkpoints()):
            head = self._load(path, map_location="cpu", weights_only=weights_only, mmap=True)
            if head is None:
                continue
            if metric not in head.metrics:
                log.info("checkpoint %s has no metric %r; not a candidate", path.name, metric)
                continue
            value = head.metrics[metric]
            candidates.append((value if mode == "min" else -value, -order, path))  # ties: the last saved
        for _, _, path in sorted(candidates):
            ckpt = self._load(path, map_location=map_location, weights_only=weights_only)
            if ckpt is not None:
                self._loaded(ckpt, resume_cost)
                return ckpt
        return None

    def _loaded(self, ckpt: Checkpoint, resume_cost: bool) -> None:
        if resume_cost:
            self.resume(ckpt)
        if self._metrics is not None:  # a restarted job shows its last checkpoint before it saves again
            self._metrics.record_checkpoint(ckpt.saved_at)

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
        m = self._pattern.match(path.name)
        try:
            return Checkpoint(path=path, step=int(payload["step"]), metrics=dict(payload["metrics"]),
                              cost_usd=payload.get("cost_usd"),
                              node_cost_usd_total=payload.get("node_cost_usd_total"),
                              saved_at=float(payload["saved_at"]), job=str(payload["job"]),
                              state=payload["state"], sequence=int(m.group(1)) if m else -1)
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
        """Remove temp files of saves that can no longer finish, never one another process is still writing.

        Ours name their writer (pid@host): gone from this host means stale. A writer on another host (a shared
        volume) or an unnamed file is only judged by age (STALE_TEMP_SECONDS).
        """
        host = _host()
        now = time.time()
        for p in self.directory.glob(f".{self.prefix}-*.tmp"):
            m = self._temp.match(p.name)
            if m and m.group(2) == host:
                pid = int(m.group(1))
                stale = pid != os.getpid() and not _pid_alive(pid)
            else:
                try:
                    stale = now - p.stat().st_mtime > STALE_TEMP_SECONDS
                except OSError:
                    continue
            if not stale:
                log.info("leaving %s: another save may still be writing it", p.name)
                continue
            log.warning("removing %s, left by an interrupted checkpoint save", p.name)
            with contextlib.suppress(OSError):
                p.unlink()

