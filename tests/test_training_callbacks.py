"""Lightning and Hugging Face callbacks, driven in each framework's hook order.

Neither lightning nor transformers is installed here, so the trainers below are minimal DUCK-TYPED stand-ins
that carry only the attributes the callbacks read and call the hooks in the order the frameworks document.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.training import TrainingMetrics
from exporter.training.callbacks import HFTrainingMetrics, LightningTrainingMetrics, batch_len


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


class Batch:
    """A tensor-like batch: only ``shape`` is read."""

    def __init__(self, n: int) -> None:
        self.shape = (n, 16)


class DuckTypedLightningTrainer:
    """Calls the Callback hooks like lightning.pytorch.Trainer.fit does, with gradient accumulation."""

    def __init__(self, callbacks, precision: str = "bf16-mixed", accumulate: int = 2) -> None:
        self.callbacks, self.precision, self.accumulate, self.global_step = callbacks, precision, accumulate, 0

    def fit(self, batches) -> None:
        for cb in self.callbacks:
            cb.on_train_start(self, None)
        for i, batch in enumerate(batches):
            for cb in self.callbacks:
                cb.on_train_batch_start(self, None, batch, i)
            if (i + 1) % self.accumulate == 0:
                self.global_step += 1
            for cb in self.callbacks:
                cb.on_train_batch_end(self, None, {"loss": 0.0}, batch, i)
        for cb in self.callbacks:
            cb.on_save_checkpoint(self, None, {})
            cb.on_train_end(self, None)


def test_lightning_callback_counts_samples_and_optimizer_steps():
    tm = TrainingMetrics("pl-job", port=0, addr="127.0.0.1", memory_reader=None)
    cb = LightningTrainingMetrics("pl-job", metrics=tm)
    trainer = DuckTypedLightningTrainer([cb])
    batches = [Batch(16), ({"input_ids": Batch(16)}, Batch(16)), Batch(16), [Batch(7)]]  # last one partial
    seen = {}
    orig_end = cb.on_train_end
    cb.on_train_end = lambda t, m: (seen.update(scrape(tm.port)), orig_end(t, m))
    trainer.fit(batches)
    job = (("job", "pl-job"),)
    assert seen[("gaudi_training_samples_total", job)] == 55.0
    assert seen[("gaudi_training_steps_total", job)] == 2.0  # 4 batches, accumulate 2
    info = [k for k in seen if k[0] == "gaudi_training_info"]
    assert info == [("gaudi_training_info", (("batch_size", "16"), ("job", "pl-job"), ("model", ""),
                                             ("precision", "bf16-mixed")))]
    assert seen[("gaudi_training_checkpoint_last_timestamp_seconds", job)] > 0


def test_hf_callback_uses_training_arguments():
    tm = TrainingMetrics("hf-job", port=0, addr="127.0.0.1", memory_reader=None)
    cb = HFTrainingMetrics("hf-job", metrics=tm)
    # the attributes of transformers.TrainingArguments / TrainerState the callback reads
    args = types.SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=8, world_size=2,
                                 bf16=True, fp16=False)
    state = types.SimpleNamespace(num_input_tokens_seen=0, global_step=0)
    cb.on_train_begin(args, state, None)
    for _ in range(3):
        state.num_input_tokens_seen += 2 * 4 * 8 * 128  # global count over 2 processes
        state.global_step += 1
        cb.on_step_end(args, state, None)
    s = scrape(tm.port)
    cb.on_train_end(args, state, None)
    job = (("job", "hf-job"),)
    assert s[("gaudi_training_samples_total", job)] == 3 * 4 * 8
    assert s[("gaudi_training_tokens_total", job)] == 3 * 4 * 8 * 128  # this process' share
    assert s[("gaudi_training_steps_total", job)] == 3
    assert ("gaudi_training_info", (("batch_size", "4"), ("job", "hf-job"), ("model", ""),
                                    ("precision", "bf16"))) in s


def test_batch_len_reads_the_leading_dimension():
    assert batch_len(Batch(5)) == 5
    assert batch_len({"labels": Batch(3)}) == 3
    assert batch_len([None, (Batch(2),)]) == 2
    assert batch_len("text") is None


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_callback_is_a_real_trainer_callback_when_transformers_is_installed():
    import transformers

    assert issubclass(HFTrainingMetrics, transformers.TrainerCallback)
