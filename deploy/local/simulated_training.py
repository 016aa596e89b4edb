"""A SIMULATED training job for the demo: no model and no HPU, each step is a timed sleep.

It goes through the real training-side code (exporter.training.TrainingMetrics and the checkpoint report to the node
exporter), so the cost advisor, `report run` and the cost-per-sample panels have a job to read. It is labelled as
simulated wherever it shows: the job name the demo gives it, model="simulated", and its log. It runs two batch sizes
in turn with the precision held fixed, so `advise batch-size` has two settings to compare. Its step time (a fixed
overhead plus a cost per sample) is made up, and so is the speed-up of the larger batch: it is a demo, not a
measurement.

    python deploy/local/simulated_training.py --port 19656 --job demo-simulated --exporter http://127.0.0.1:19654
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from a clone

from exporter.training import TrainingMetrics  # noqa: E402
from exporter.training.checkpoint_saver import ExporterClient, announce_checkpoint  # noqa: E402

log = logging.getLogger("simulated-training")

MODEL = "simulated"
PRECISION = "bf16"
STEP_OVERHEAD_S = 0.05  # made-up per-step cost (launch, optimizer), the same for every batch size
PER_SAMPLE_S = 0.0005  # made-up cost per sample
TOKENS_PER_SAMPLE = 512


def step_seconds(batch_size: int) -> float:
    """Simulated wall time of one step: larger batches amortise the fixed overhead (samples/s grows with batch)."""
    return STEP_OVERHEAD_S + PER_SAMPLE_S * batch_size


def run(tm: TrainingMetrics, batch_sizes: list[int], phase_seconds: float, stop: threading.Event,
        exporter: ExporterClient | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Alternate the batch sizes, ``phase_seconds`` each, until ``stop``; a "checkpoint" ends each phase."""
    while not stop.is_set():
        for bs in batch_sizes:
            tm.set_phase(batch_size=bs)
            end = clock() + phase_seconds
            while clock() < end:
                if stop.wait(step_seconds(bs)):
                    return
                tm.step(samples=bs, tokens=bs * TOKENS_PER_SAMPLE)
            announce_checkpoint(time.time(), tm.job, tm, exporter)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", default="demo-simulated", help="job name (default %(default)s)")
    ap.add_argument("--port", type=int, default=9655, help="port of /metrics on 127.0.0.1 (default %(default)s)")
    ap.add_argument("--batch-sizes", default="32,128", help="comma-separated batch sizes run in turn")
    ap.add_argument("--phase-seconds", type=float, default=20, help="seconds per batch size (default %(default)s)")
    ap.add_argument("--exporter", help="node exporter base URL to report checkpoints to (cost at risk)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--batch-sizes: expected integers separated by commas, got {args.batch_sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--batch-sizes: give at least one batch size >= 1")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.warning("SIMULATED training job %r: no model is trained and no HPU is used; each step is a sleep of "
                "%.3f s + %.4f s per sample (made-up figures). Batch sizes %s, %.0f s each, precision %s held "
                "fixed.", args.job, STEP_OVERHEAD_S, PER_SAMPLE_S, sizes, args.phase_seconds, PRECISION)
    with TrainingMetrics(args.job, batch_size=sizes[0], precision=PRECISION, model=MODEL, port=args.port,
                         addr="127.0.0.1", memory_reader=None) as tm:
        run(tm, sizes, args.phase_seconds, stop, ExporterClient(args.exporter) if args.exporter else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
