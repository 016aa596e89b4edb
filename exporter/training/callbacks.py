"""Callbacks that feed TrainingMetrics from PyTorch Lightning or the Hugging Face Trainer, loop untouched.

Both frameworks are optional imports: when one is installed its callback subclasses the framework's base
class, otherwise it is a plain class with the same hooks (so anything calling them can drive it).

Every rank runs the callback; only local rank 0 serves (TrainingMetrics), and only the main process (global rank
0) counts samples and tokens, as the job's GLOBAL figures. At the end of training the server keeps serving until
the process exits (or ``linger_seconds``, then stops) so that a last scrape still sees the final counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from exporter.training.checkpoint_saver import ExporterClient, announce_checkpoint
from exporter.training.metrics import DEFAULT_PORT, TrainingMetrics

log = logging.getLogger(__name__)


def _base(candidates: list[tuple[str, str]]) -> type:
    import importlib

    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return object


_LightningBase = _base([("lightning.pytorch", "Callback"), ("pytorch_lightning", "Callback")])
_HFBase = _base([("transformers", "TrainerCallback")])


def batch_len(batch: Any) -> int | None:
    """Samples in a batch: the leading dimension of its first tensor-like element."""
    if hasattr(batch, "shape") and len(batch.shape) > 0:
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return next((n for n in map(batch_len, batch.values()) if n is not None), None)
    if isinstance(batch, list | tuple):
        return next((n for n in map(batch_len, batch) if n is not None), None)
    return None


class _Reporter:
    """Shared part: the metrics object, and the optional checkpoint report to the node exporter."""

    def __init__(self, job: str, batch_size: int | None, precision: str | None, model: str, port: int,
                 addr: str, exporter_url: str | None, metrics: TrainingMetrics | None,
                 linger_seconds: float | None) -> None:
        if linger_seconds is not None and linger_seconds < 0:
            raise ValueError(f"training callback: 'linger_seconds' must be >= 0 or None, got {linger_seconds}")
        self.metrics = metrics or TrainingMetrics(job, batch_size, precision or "", model, port=port,
                                                  addr=addr)
        self._exporter = ExporterClient(exporter_url) if exporter_url else None
        self._linger = linger_seconds

    def checkpoint(self, timestamp: float) -> None:
        if self.metrics.active:  # frameworks call the save hooks on every rank: report once per pod
            announce_checkpoint(timestamp, self.metrics.job, self.metrics, self._exporter)

    def train_end(self) -> None:
        """None: keep serving until the process exits (the server thread is a daemon); else stop after a linger."""
        if self._linger is not None:
            self.metrics.close(linger_seconds=self._linger)


class LightningTrainingMetrics(_LightningBase):  # type: ignore[misc,valid-type]
    """``Trainer(callbacks=[LightningTrainingMetrics(job="llama-ft")])``.

    Samples per batch: the batch's leading dimension x ``trainer.world_size`` (every rank trains a batch that
    size), counted on the main process (``trainer.is_global_zero``) only; ``tokens_fn(batch)`` is scaled the same
    way. Optimizer steps from ``trainer.global_step`` (so gradient accumulation is counted right); precision from
    ``trainer.precision`` unless given.
    """

    def __init__(self, job: str, *, batch_size: int | None = None, precision: str | None = None,
                 model: str = "", port: int = DEFAULT_PORT, addr: str = "0.0.0.0",
                 tokens_fn: Callable[[Any], int] | None = None, exporter_url: str | None = None,
                 metrics: TrainingMetrics | None = None, linger_seconds: float | None = None) -> None:
        super().__init__()
        self._r = _Reporter(job, batch_size, precision, model, port, addr, exporter_url, metrics,
                            linger_seconds)
        self._configured_bs = batch_size
        self._configured_precision = precision
        self._tokens_fn = tokens_fn
        self._last_global_step = 0

    @property
    def metrics(self) -> TrainingMetrics:
        return self._r.metrics

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        precision = self._configured_precision or str(getattr(trainer, "precision", "") or "")
        self.metrics.set_phase(precision=precision)
        self._last_global_step = int(getattr(trainer, "global_step", 0))
        self.metrics.start()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._configured_bs is None and self.metrics.batch_size is None:
            n = batch_len(batch)
            if n is not None:
                self.metrics.set_phase(batch_size=n)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        samples = tokens = 0
        if bool(getattr(trainer, "is_global_zero", self.metrics.is_main)):
            world = max(1, int(getattr(trainer, "world_size", self.metrics.ranks.world_size) or 1))
            n = batch_len(batch)
            samples = world * (n if n is not None else self.metrics.batch_size or 0)
            tokens = world * int(self._tokens_fn(batch)) if self._tokens_fn else 0
        global_step = int(getattr(trainer, "global_step", self._last_global_step + 1))
        steps = max(0, global_step - self._last_global_step)
        self._last_global_step = global_step
        self.metrics.step(samples=samples, tokens=tokens, steps=steps)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._r.checkpoint(time.time())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._r.train_end()


class HFTrainingMetrics(_HFBase):  # type: ignore[misc,valid-type]
    """``Trainer(..., callbacks=[HFTrainingMetrics(job="llama-ft")])``.

    Per optimizer step, on the main process (``state.is_world_process_zero``) only: the job's global samples =
    train_batch_size x gradient_accumulation_steps x world_size, and tokens = the growth of
    ``state.num_input_tokens_seen`` (already a global count). Precision is bf16/fp16/fp32 from the arguments.
    """

    def __init__(self, job: str, *, model: str = "", port: int = DEFAULT_PORT, addr: str = "0.0.0.0",
                 exporter_url: str | None = None, metrics: TrainingMetrics | None = None,
                 linger_seconds: float | None = None) -> None:
        super().__init__()
        self._r = _Reporter(job, None, None, model, port, addr, exporter_url, metrics, linger_seconds)
        self._samples_per_step = 0
        self._tokens_seen = 0

    @property
    def metrics(self) -> TrainingMetrics:
        return self._r.metrics

    @staticmethod
    def _precision(args: Any) -> str:
        if getattr(args, "bf16", False):
            return "bf16"
        if getattr(args, "fp16", False):
            return "fp16"
        return "fp32"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        bs = int(args.per_device_train_batch_size)
        per_process = int(getattr(args, "train_batch_size", bs) or bs)  # x the devices of one process
        accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        world = max(1, int(getattr(args, "world_size", 1) or 1))
        self._samples_per_step = per_process * accumulation * world
        self._tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self.metrics.set_phase(batch_size=bs, precision=self._precision(args))
        self.metrics.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        tokens = max(0, seen - self._tokens_seen)
        self._tokens_seen = seen
        if bool(getattr(state, "is_world_process_zero", self.metrics.is_main)):
            self.metrics.step(samples=self._samples_per_step, tokens=tokens)
        else:  # another host's local rank 0: its steps and step times, not the job's samples again
            self.metrics.step(samples=0, tokens=0)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._r.checkpoint(time.time())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._r.train_end()
