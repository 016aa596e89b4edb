"""Benchmark: how many series and bytes bad device output makes (issue 15 item 4), through the real loop.

    python benchmarks/device_series.py [--junk-lines 20000] [--ticks 60]

Prints figures; asserts nothing. Junk: the fake hl-smi prints 8 good devices and N junk lines (half of them naming a
device index that is not there); one tick. Churn: 8 devices whose UUIDs change on every read, one tick a second.
Run it on a checkout of main to compare (before: one read-error series per junk line, one gaudi_hpu_up per UUID).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.backends.hlsmi import HlSmiBackend  # noqa: E402
from exporter.collectors.hpu import HpuCollector  # noqa: E402
from exporter.loop import Loop  # noqa: E402
from exporter.readings import BackendResult, DeviceIdentity, DeviceReading  # noqa: E402


def count(text: str, name: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(name + "{"))


def junk(lines: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as d:
        capture = (REPO / "tests" / "fixtures" / "hlsmi" / "gaudi3-8x.csv").read_text()
        noise = [f"!raw {n + 100}, junk {n}" if n % 2 else f"!raw noise {n}" for n in range(lines)]
        (Path(d) / "gaudi3-8x.csv").write_text(capture + "\n".join(noise) + "\n")
        os.environ.update(FAKE_HLSMI_SCENARIO="normal", FAKE_HLSMI_FIXTURES=d)
        backend = HlSmiBackend(path=str(REPO / "tests" / "fakes" / "hl-smi"))
        backend.open()
        loop = Loop([HpuCollector(backend)], interval=1.0, version="bench", backend="hlsmi", clock=lambda: 1000.0)
        text = loop.tick().text.decode()
    return count(text, "gaudi_hpu_read_errors_total"), len(text)


class ChangingUuids:
    name = "bench"

    def __init__(self) -> None:
        self.reads = 0

    def read(self, *, slow: bool) -> BackendResult:
        self.reads += 1
        return BackendResult(devices=tuple(DeviceReading(DeviceIdentity(i, f"GEN{self.reads}-{i}"))
                                           for i in range(8)))


def churn(ticks: int) -> int:
    t = [1000.0]
    loop = Loop([HpuCollector(ChangingUuids())], interval=1.0, version="bench", backend="bench",
                clock=lambda: t[0])
    for _ in range(ticks):
        text = loop.tick().text.decode()
        t[0] += 1
    return count(text, "gaudi_hpu_up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junk-lines", type=int, default=20_000)
    ap.add_argument("--ticks", type=int, default=60)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the point is the series, not the (bounded) error log
    series, size = junk(args.junk_lines)
    print(f"{args.junk_lines} junk hl-smi lines: {series} gaudi_hpu_read_errors_total series, exposition {size} bytes")
    print(f"8 HPUs changing UUID every tick, {args.ticks} ticks: {churn(args.ticks)} gaudi_hpu_up series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
