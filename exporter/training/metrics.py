"""Training-side metrics: a few lines in a training loop expose throughput, steps and settings for Prometheus.

The training process serves its own /metrics (default port 9655) from its own CollectorRegistry, so a
PodMonitor can scrape it next to the node exporter. Names come from the catalogue; no torch import here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class TrainingMetrics:
    """Counters and gauges of one training process, served over HTTP while the context is open.

    ``with TrainingMetrics(job="llama-ft", batch_size=32, precision="bf16") as tm: ... tm.step(samples=32)``
    """

    def __init__(self, job: str, batch_size: int | None = None, precision: str = "", model: str = "", *,
                 port: int = DEFAULT_PORT, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None,
                 memory_reader: MemoryReader | None | str = "auto",
                 clock: Callable[[], float] = time.monotonic, serve: bool = True) -> None:
        if not job:
            raise ValueError("TrainingMetrics: 'job' must be a non-empty string")
        self.job = job
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
        if self._serve and self._server is None:
            self._server, self._thread = start_http_server(self._port, self._addr, registry=self.registry)
            log.info("training metrics of job %s on http://%s:%d/metrics", self.job, self._addr, self.port)
        self._last_mark = self._clock()
        self.update_memory()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

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
        """Count one optimizer step; its duration is the time since the previous step unless given."""
        if samples is None:
            samples = self._settings["batch_size"]
            if samples is None:
                raise ValueError("TrainingMetrics.step: 'samples' is required when no batch_size was given")
        for name, value in (("samples", samples), ("tokens", tokens), ("steps", steps)):
            if value < 0:
                raise ValueError(f"TrainingMetrics.step: '{name}' must be >= 0, got {value}")
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
        with self._lock:
            if labels != self._info_labels:
                self._info.remove(*self._info_labels)
                self._info.labels(*labels).set(1)
                log.info("job %s: phase change %s -> %s", self.job, self._settings, new)
            self._settings = new
            self._info_labels = labels
            self._last_mark = self._clock()

    def record_checkpoint(self, timestamp: float) -> None:
        self._ckpt.labels(self.job).set(timestamp)

    def update_memory(self) -> None:
        if self._memory is None:
            return
        reading = self._memory.read()
        if reading is not None:
            self._mem.set(reading.allocated_bytes)
            self._mem_max.set(reading.max_allocated_bytes)

    def _labels_for(self, settings: dict[str, Any]) -> tuple[str, ...]:
        values = {"job": self.job, **{k: _label(v) for k, v in settings.items()}}
        return tuple(values[name] for name in _INFO.labels)
