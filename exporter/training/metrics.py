"""Training-side metrics: a few lines in a training loop expose throughput, steps and settings for Prometheus.

The training process serves its own /metrics (default port 9655) from its own CollectorRegistry, so a
PodMonitor can scrape it next to the node exporter. Names come from the catalogue; no torch import here.

A distributed job starts one process per HPU (torchrun, mpirun), all with the same code and port. Only local rank 0
(of each pod/host; configurable) serves and records: the others would fail to bind the port, and summing eight
processes' counters is error-prone. That one process is given the GLOBAL samples of each step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from exporter import catalogue
from exporter.training.hpu_memory import MemoryReader, load_reader

log = logging.getLogger(__name__)

DEFAULT_PORT = 9655
# From a 1 ms CPU toy step to a 5 min giant step.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0)

_INFO = catalogue.get("gaudi_training_info")
_SAMPLES = catalogue.get("gaudi_training_samples_total")
_TOKENS = catalogue.get("gaudi_training_tokens_total")
_STEPS = catalogue.get("gaudi_training_steps_total")
_STEP_DURATION = catalogue.get("gaudi_training_step_duration_seconds")
_MEM = catalogue.get("gaudi_training_hpu_memory_allocated_bytes")
_MEM_MAX = catalogue.get("gaudi_training_hpu_memory_max_allocated_bytes")
_CKPT = catalogue.get("gaudi_training_checkpoint_last_timestamp_seconds")


# torchrun sets the first of each; Open MPI's mpirun (Intel's Gaudi multi-node recipes) the second.
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK")
WORLD_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a distributed job; (0, 0, 1) for a plain single process."""

    local: int
    rank: int
    world_size: int


def _env_int(environ: Mapping[str, str], names: tuple[str, ...], minimum: int) -> int | None:
    for name in names:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"TrainingMetrics: environment variable {name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"TrainingMetrics: environment variable {name} must be >= {minimum}, got {value}")
        return value
    return None


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The launcher's ranks; without a local rank the global rank stands in (one host)."""
    env = os.environ if environ is None else environ
    rank = _env_int(env, RANK_VARS, 0)
    local = _env_int(env, LOCAL_RANK_VARS, 0)
    world = _env_int(env, WORLD_SIZE_VARS, 1)
    rank = 0 if rank is None else rank
    return Ranks(local=rank if local is None else local, rank=rank, world_size=1 if world is None else world)


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class TrainingMetrics:
    """Counters and gauges of one training process, served over HTTP while the context is open.

    ``with TrainingMetrics(job="llama-ft", batch_size=32, precision="bf16") as tm: ... tm.step(samples=32)``

    Only the process whose local rank (LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_RANK) is ``serve_local_rank`` is
    ``active``: it serves and records. Every other rank gets a no-op object (it logs so once), so the same code
    runs on all ranks and only one binds the port.
    """

    def __init__(self, job: str, batch_size: int | None = None, precision: str = "", model: str = "", *,
                 port: int = DEFAULT_PORT, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None,
                 memory_reader: MemoryReader | None | str = "auto",
                 clock: Callable[[], float] = time.monotonic, serve: bool = True, serve_local_rank: int = 0,
                 environ: Mapping[str, str] | None = None) -> None:
        if not job:
            raise ValueError("TrainingMetrics: 'job' must be a non-empty string")
        if serve_local_rank < 0:
            raise ValueError(f"TrainingMetrics: 'serve_local_rank' must be >= 0, got {serve_local_rank}")
        self.job = job
        self.ranks = ranks_from_env(environ)
        self.active = self.ranks.local == serve_local_rank
        if not self.active:
            log.info("training metrics of job %s: local rank %d (rank %d of %d) neither serves nor records; "
                     "local rank %d does", job, self.ranks.local, self.ranks.rank, self.ranks.world_size,
                     serve_local_rank)
            memory_reader = None
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._port = port
        self._addr = addr
        self._serve = serve
        self._clock = clock
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._memory = load_reader() if memory_reader == "auto" else memory_reader
        self._last_mark: float | None = None

        r = self.registry
        self._info = Gauge(_INFO.name, _INFO.help, _INFO.labels, registry=r)
        self._samples = Counter(_SAMPLES.family, _SAMPLES.help, _SAMPLES.labels, registry=r).labels(job)
        self._tokens = Counter(_TOKENS.family, _TOKENS.help, _TOKENS.labels, registry=r).labels(job)
        self._steps = Counter(_STEPS.family, _STEPS.help, _STEPS.labels, registry=r).labels(job)
        self._duration = Histogram(_STEP_DURATION.name, _STEP_DURATION.help, _STEP_DURATION.labels,
                                   buckets=STEP_BUCKETS, registry=r).labels(job)
        self._ckpt = Gauge(_CKPT.name, _CKPT.help, _CKPT.labels, registry=r)
        if self._memory is not None:
            self._mem = Gauge(_MEM.name, _MEM.help, _MEM.labels, registry=r).labels(job)
            self._mem_max = Gauge(_MEM_MAX.name, _MEM_MAX.help, _MEM_MAX.labels, registry=r).labels(job)
        self._settings = {"batch_size": batch_size, "precision": precision, "model": model}
        self._info_labels = self._labels_for(self._settings)
        self._info.labels(*self._info_labels).set(1)

    # --- lifecycle
    def __enter__(self) -> TrainingMetrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Serve /metrics; idempotent so callbacks may call it from several hooks."""
        if not self.active:
            return
        if self._serve and self._server is None:
            self._server, self._thread = start_http_server(self._port, self._addr, registry=self.registry)
            log.info("training metrics of job %s on http://%s:%d/metrics", self.job, self._addr, self.port)
        self._last_mark = self._clock()
        self.update_memory()

    def close(self, linger_seconds: float = 0.0) -> None:
        """Stop serving, after ``linger_seconds`` (blocking) so that a last scrape can read the final values."""
        if linger_seconds < 0:
            raise ValueError(f"TrainingMetrics.close: 'linger_seconds' must be >= 0, got {linger_seconds}")
        if self._server is None:
            return
        if linger_seconds:
            log.info("training metrics of job %s: serving %.0f s more for a last scrape", self.job, linger_seconds)
            time.sleep(linger_seconds)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def is_main(self) -> bool:
        """Global rank 0: the process that counts the job's samples in a multi-host job."""
        return self.ranks.rank == 0

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        return self._server.server_port if self._server is not None else self._port

    @property
    def batch_size(self) -> int | None:
        return self._settings["batch_size"]

    # --- recording
    def mark(self) -> None:
        """Restart the step timer (after evaluation, a checkpoint or anything that is not a training step)."""
        self._last_mark = self._clock()

    def step(self, samples: int | None = None, tokens: int = 0, *, duration: float | None = None,
             steps: int = 1) -> None:
        """Count one optimizer step; its duration is the time since the previous step unless given.

        ``samples`` (and ``tokens``) are the GLOBAL figures of the step: batch per device x gradient accumulation x
        world size, since only this one process reports. In a multi-host job give them on global rank 0
        (``is_main``) and 0 on the other hosts' local rank 0, or the job is counted once per host.
        """
        if samples is None:
            samples = self._settings["batch_size"]
            if samples is None:
                raise ValueError("TrainingMetrics.step: 'samples' is required when no batch_size was given")
        for name, value in (("samples", samples), ("tokens", tokens), ("steps", steps)):
            if value < 0:
                raise ValueError(f"TrainingMetrics.step: '{name}' must be >= 0, got {value}")
        if not self.active:
            return
        now = self._clock()
        with self._lock:
            if duration is None:
                duration = now - self._last_mark if self._last_mark is not None else None
            self._last_mark = now
        if duration is not None:
            if duration < 0:
                raise ValueError(f"TrainingMetrics.step: 'duration' must be >= 0, got {duration}")
            self._duration.observe(duration)
        self._samples.inc(samples)
        if tokens:
            self._tokens.inc(tokens)
        if steps:
            self._steps.inc(steps)
        self.update_memory()

    def set_phase(self, *, batch_size: int | None = None, precision: str | None = None,
                  model: str | None = None) -> None:
        """Switch the info series to new settings; the old series goes, so joins see one phase at a time."""
        new = dict(self._settings)
        for key, value in (("batch_size", batch_size), ("precision", precision), ("model", model)):
            if value is not None:
                new[key] = value
        labels = self._labels_for(new)
        if not self.active:
            self._settings = new
            return
        with self._lock:
            if labels != self._info_labels:
                self._info.remove(*self._info_labels)
                self._info.labels(*labels).set(1)
                log.info("job %s: phase change %s -> %s", self.job, self._settings, new)
            self._settings = new
            self._info_labels = labels
            self._last_mark = self._clock()

    def record_checkpoint(self, timestamp: float) -> None:
        if self.active:
            self._ckpt.labels(self.job).set(timestamp)

    def update_memory(self) -> None:
        if self._memory is None or not self.active:
            return
        reading = self._memory.read()
        if reading is not None:
            self._mem.set(reading.allocated_bytes)
            self._mem_max.set(reading.max_allocated_bytes)

    def _labels_for(self, settings: dict[str, Any]) -> tuple[str, ...]:
        values = {"job": self.job, **{k: _label(v) for k, v in settings.items()}}
        return tuple(values[name] for name in _INFO.labels)
