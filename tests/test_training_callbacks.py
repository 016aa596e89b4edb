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
    """Calls the Callback hooks like lightning.pytorch.Trainer.fit does, with gradient accumulation; carries the
    trainer's world_size and is_global_zero like the real one (num_nodes x devices, global rank 0)."""

    def __init__(self, callbacks, precision: str = "bf16-mixed", accumulate: int = 2, world_size: int = 1,
                 is_global_zero: bool = True) -> None:
        self.callbacks, self.precision, self.accumulate, self.global_step = callbacks, precision, accumulate, 0
        self.world_size, self.is_global_zero = world_size, is_global_zero

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


SINGLE = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}


def metrics(job: str, environ=SINGLE, port: int = 0) -> TrainingMetrics:
    return TrainingMetrics(job, port=port, addr="127.0.0.1", memory_reader=None, environ=environ)


BATCHES = [Batch(16), ({"input_ids": Batch(16)}, Batch(16)), Batch(16), [Batch(7)]]  # last one partial


def test_lightning_callback_counts_global_samples_and_optimizer_steps_and_serves_after_the_end():
    tm = metrics("pl-job", {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4"})
    cb = LightningTrainingMetrics("pl-job", metrics=tm)
    DuckTypedLightningTrainer([cb], world_size=4).fit(BATCHES)
    try:
        seen = scrape(tm.port)  # after on_train_end: the last scrape still gets the final values
    finally:
        tm.close()
    job = (("job", "pl-job"),)
    assert seen[("gaudi_training_samples_total", job)] == 4 * 55.0  # every one of the 4 ranks trained each batch
    assert seen[("gaudi_training_steps_total", job)] == 2.0  # 4 batches, accumulate 2
    info = [k for k in seen if k[0] == "gaudi_training_info"]
    assert info == [("gaudi_training_info", (("batch_size", "16"), ("job", "pl-job"), ("model", ""),
                                             ("precision", "bf16-mixed")))]
    assert seen[("gaudi_training_checkpoint_last_timestamp_seconds", job)] > 0


def test_lightning_on_another_host_s_local_rank_0_counts_steps_not_samples():
    tm = metrics("pl-job", {"LOCAL_RANK": "0", "RANK": "8", "WORLD_SIZE": "16"})
    cb = LightningTrainingMetrics("pl-job", metrics=tm, linger_seconds=0)
    seen = {}
    orig_end = cb.on_train_end
    cb.on_train_end = lambda t, m: (seen.update(scrape(tm.port)), orig_end(t, m))
    DuckTypedLightningTrainer([cb], world_size=16, is_global_zero=False).fit(BATCHES)
    job = (("job", "pl-job"),)
    assert seen[("gaudi_training_samples_total", job)] == 0.0
    assert seen[("gaudi_training_steps_total", job)] == 2.0


def test_train_end_with_a_linger_of_zero_stops_serving():
    tm = metrics("pl-job")
    cb = LightningTrainingMetrics("pl-job", metrics=tm, linger_seconds=0)
    DuckTypedLightningTrainer([cb]).fit(BATCHES)
    with pytest.raises(requests.ConnectionError):
        scrape(tm.port)
    with pytest.raises(ValueError, match="linger_seconds"):
        LightningTrainingMetrics("pl-job", metrics=tm, linger_seconds=-1)


def hf_args(**kw):
    # the attributes of transformers.TrainingArguments the callback reads (train_batch_size = per device x n_gpu)
    base = {"per_device_train_batch_size": 4, "train_batch_size": 4, "gradient_accumulation_steps": 8,
            "world_size": 2, "bf16": True, "fp16": False}
    return types.SimpleNamespace(**{**base, **kw})


def run_hf(cb, args, is_main: bool = True):
    state = types.SimpleNamespace(num_input_tokens_seen=0, global_step=0, is_world_process_zero=is_main)
    cb.on_train_begin(args, state, None)
    for _ in range(3):
        state.num_input_tokens_seen += 2 * 4 * 8 * 128  # global count over 2 processes
        state.global_step += 1
        cb.on_step_end(args, state, None)
    cb.on_save(args, state, None)
    cb.on_train_end(args, state, None)


def test_hf_callback_counts_the_job_s_global_samples_on_the_main_process():
    tm = metrics("hf-job", {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2"})
    cb = HFTrainingMetrics("hf-job", metrics=tm)
    run_hf(cb, hf_args())
    try:
        s = scrape(tm.port)  # still served after on_train_end
    finally:
        tm.close()
    job = (("job", "hf-job"),)
    assert s[("gaudi_training_samples_total", job)] == 3 * 4 * 8 * 2  # batch x accumulation x world size
    assert s[("gaudi_training_tokens_total", job)] == 3 * 2 * 4 * 8 * 128  # the Trainer's global count
    assert s[("gaudi_training_steps_total", job)] == 3
    assert ("gaudi_training_info", (("batch_size", "4"), ("job", "hf-job"), ("model", ""),
                                    ("precision", "bf16"))) in s


def test_hf_callback_on_a_process_that_is_not_the_main_one_adds_no_samples():
    tm = metrics("hf-job", {"LOCAL_RANK": "0", "RANK": "8", "WORLD_SIZE": "16"})
    cb = HFTrainingMetrics("hf-job", metrics=tm)
    run_hf(cb, hf_args(world_size=16), is_main=False)
    try:
        s = scrape(tm.port)
    finally:
        tm.close()
    job = (("job", "hf-job"),)
    assert s[("gaudi_training_samples_total", job)] == 0
    assert s[("gaudi_training_tokens_total", job)] == 0
    assert s[("gaudi_training_steps_total", job)] == 3


def test_callbacks_on_other_local_ranks_neither_bind_nor_report(monkeypatch):
    """8 ranks per pod, one port: ranks 1..7 run the same callbacks next to rank 0 without EADDRINUSE."""
    rank0 = metrics("hf-job", {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "8"})
    cb0 = HFTrainingMetrics("hf-job", metrics=rank0)
    state = types.SimpleNamespace(num_input_tokens_seen=0, is_world_process_zero=True)
    cb0.on_train_begin(hf_args(world_size=8), state, None)
    try:
        for local in range(1, 8):
            monkeypatch.setenv("LOCAL_RANK", str(local))
            monkeypatch.setenv("RANK", str(local))
            monkeypatch.setenv("WORLD_SIZE", "8")
            cb = HFTrainingMetrics("hf-job", port=rank0.port, addr="127.0.0.1")  # the same port as rank 0
            run_hf(cb, hf_args(world_size=8), is_main=False)
            assert not cb.metrics.active
            lcb = LightningTrainingMetrics("pl-job", port=rank0.port, addr="127.0.0.1")
            DuckTypedLightningTrainer([lcb], world_size=8, is_global_zero=False).fit(BATCHES)
        cb0.on_step_end(hf_args(world_size=8), state, None)
        s = scrape(rank0.port)
    finally:
        rank0.close()
    assert s[("gaudi_training_samples_total", (("job", "hf-job"),))] == 4 * 8 * 8
    assert not any(k[0].startswith("gaudi_training") and ("job", "pl-job") in k[1] for k in s)


def test_batch_len_reads_the_leading_dimension():
    assert batch_len(Batch(5)) == 5
    assert batch_len({"labels": Batch(3)}) == 3
    assert batch_len([None, (Batch(2),)]) == 2
    assert batch_len("text") is None


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_callback_is_a_real_trainer_callback_when_transformers_is_installed():
    import transformers

    assert issubclass(HFTrainingMetrics, transformers.TrainerCallback)
