"""Callbacks that feed TrainingMetrics from PyTorch Lightning or the Hugging Face Trainer, loop untouched.

Both frameworks are optional imports: when one is installed its callback subclasses the framework's base
class, otherwise it is a plain class with the same hooks (so anything calling them can drive it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from exporter.training.checkpoint import ExporterClient
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
                 addr: str, exporter_url: str | None, metrics: TrainingMetrics | None) -> None:
        self.metrics = metrics or TrainingMetrics(job, batch_size, precision or "", model, port=port,
                                                  addr=addr)
        self._exporter = ExporterClient(exporter_url) if exporter_url else None

    def checkpoint(self, timestamp: float) -> None:
        self.metrics.record_checkpoint(timestamp)
        if self._exporter is not None:
            self._exporter.report_checkpoint(timestamp, self.metrics.job)
        self.metrics.mark()


class LightningTrainingMetrics(_LightningBase):  # type: ignore[misc,valid-type]
    """``Trainer(callbacks=[LightningTrainingMetrics(job="llama-ft")])``.

    Samples per batch come from the batch's leading dimension; optimizer steps from ``trainer.global_step``
    (so gradient accumulation is counted right); precision from ``trainer.precision`` unless given.
    """

    def __init__(self, job: str, *, batch_size: int | None = None, precision: str | None = None,
                 model: str = "", port: int = DEFAULT_PORT, addr: str = "0.0.0.0",
                 tokens_fn: Callable[[Any], int] | None = None, exporter_url: str | None = None,
                 metrics: TrainingMetrics | None = None) -> None:
        super().__init__()
        self._r = _Reporter(job, batch_size, precision, model, port, addr, exporter_url, metrics)
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
        samples = batch_len(batch)
        if samples is None:
            samples = self.metrics.batch_size or 0
        tokens = int(self._tokens_fn(batch)) if self._tokens_fn else 0
        global_step = int(getattr(trainer, "global_step", self._last_global_step + 1))
        steps = max(0, global_step - self._last_global_step)
        self._last_global_step = global_step
        self.metrics.step(samples=samples, tokens=tokens, steps=steps)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        import time

        self._r.checkpoint(time.time())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.metrics.close()


class HFTrainingMetrics(_HFBase):  # type: ignore[misc,valid-type]
    """``Trainer(..., callbacks=[HFTrainingMetrics(job="llama-ft")])``.

    Per process and step: samples = per_device_train_batch_size x gradient_accumulation_steps; tokens are the
    growth of ``state.num_input_tokens_seen`` (a global count in the Trainer) divided by ``args.world_size``,
    so summing the processes gives the job's total. Precision is bf16/fp16/fp32 from the arguments.
    """

    def __init__(self, job: str, *, model: str = "", port: int = DEFAULT_PORT, addr: str = "0.0.0.0",
                 exporter_url: str | None = None, metrics: TrainingMetrics | None = None) -> None:
        super().__init__()
        self._r = _Reporter(job, None, None, model, port, addr, exporter_url, metrics)
        self._samples_per_step = 0
        self._tokens_seen = 0
        self._world = 1

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
        self._samples_per_step = bs * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        self._world = max(1, int(getattr(args, "world_size", 1) or 1))
        self._tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self.metrics.set_phase(batch_size=bs, precision=self._precision(args))
        self.metrics.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        tokens = max(0, seen - self._tokens_seen) // self._world
        self._tokens_seen = seen
        self.metrics.step(samples=self._samples_per_step, tokens=tokens)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import time

        self._r.checkpoint(time.time())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.metrics.close()
