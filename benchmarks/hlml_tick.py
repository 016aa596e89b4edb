"""Benchmark: CPU per collection tick through the REAL pyhlml and the C stand-in libhlml (tests/fakes/libhlml),
with the health signals of issue 11, against the simulated backend measured in the same run; and series per node.

    python benchmarks/hlml_tick.py [--devices 8 64] [--ticks 200] [--slow-every 12]

Prints medians and p99 of process CPU seconds per tick (every --slow-every-th tick also reads the slow signals:
ECC, row replacement, PCIe link, NIC ports, thresholds), and the series count of one node in each
--collector.hpu.nic-ports mode, with and without the series issue 11 added. Asserts nothing. Needs gcc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter import catalogue  # noqa: E402

# Families issue 11 added (the "before" count leaves them out; gaudi_hpu_nic_port_up existed before).
NEW_IN_ISSUE_11 = {
    "gaudi_hpu_memory_utilization_ratio", "gaudi_hpu_ecc_volatile_errors", "gaudi_hpu_ecc_enabled",
    "gaudi_hpu_hbm_replaced_rows", "gaudi_hpu_hbm_row_replacement_pending", "gaudi_hpu_throttle_seconds",
    "gaudi_hpu_pcie_link_generation", "gaudi_hpu_pcie_link_max_generation", "gaudi_hpu_pcie_link_width",
    "gaudi_hpu_pcie_link_max_width", "gaudi_hpu_pcie_throughput_bytes_per_second",
    "gaudi_hpu_temperature_threshold_celsius", "gaudi_hpu_power_default_limit_watts",
    "gaudi_hpu_power_min_limit_watts", "gaudi_hpu_power_max_limit_watts", "gaudi_hpu_clock_max_hertz",
    "gaudi_hpu_nic_ports",
}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def make_loop(backend, nic_ports: str = "summary"):
    from exporter.collectors.host import HostCollector
    from exporter.collectors.hpu import HpuCollector
    from exporter.collectors.pricing import PricingCollector
    from exporter.exposition import Renderer
    from exporter.loop import Loop
    from exporter.pricing.base import FixedSource, NodeIdentity, Price

    price = Price(19.92, "static", time.time())
    clock = [1_800_000_000.0]

    def now() -> float:  # the loop reads the clock twice per tick: 5 s per tick, slow readings every 12th
        clock[0] += 2.5
        return clock[0]

    return Loop([HpuCollector(backend, 60.0), HostCollector(),
                 PricingCollector(FixedSource("static", price), NodeIdentity())],
                interval=5.0, version="bench", backend=backend.name, clock=now,
                renderer=Renderer(process_metrics=False, nic_ports=nic_ports))


def tick_cpu(loop, ticks: int) -> tuple[list[float], list[float]]:
    """CPU seconds per tick: (fast ticks, slow ticks). The loop's clock advances 5 s per call: slow every 12."""
    fast, slow = [], []
    for i in range(ticks):
        t0 = time.process_time()
        loop.tick()
        (slow if i % 12 == 0 else fast).append(time.process_time() - t0)
    return fast, slow


def series_counts(text: bytes) -> tuple[int, int]:
    """(series now, series without the families issue 11 added)."""
    total = before = 0
    for line in text.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        total += 1
        name = line.split("{", 1)[0].split(" ", 1)[0]
        family = name[:-len("_total")] if name.endswith("_total") else name
        if family not in NEW_IN_ISSUE_11 and name not in NEW_IN_ISSUE_11:
            before += 1
    return total, before


BEFORE_SCRIPT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import pyhlml
from exporter.backends.hlml import HlmlBackend
from exporter.collectors.hpu import HpuCollector
from exporter.loop import Loop
pyhlml.hlml_lib.LibHLML.__init__.__defaults__ = (sys.argv[2],)
backend = HlmlBackend(module=pyhlml)
backend.open()
loop = Loop([HpuCollector(backend, 60.0)], interval=5.0, version="bench", backend="hlml")
loop.tick()
text = loop.tick().text.decode()
print(sum(1 for line in text.splitlines() if line.startswith("gaudi_hpu_")
          and not line.startswith(("gaudi_hpu_cost", "gaudi_hpu_idle_cost"))))
"""


def series_at(ref: str, tmp: Path, library: Path, state: Path) -> int | None:
    """Series of an 8-HPU node (HPU collector only) with the exporter as it was at git ``ref``."""
    import subprocess

    src = tmp / f"src-{ref.replace('/', '_')}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "exporter"], capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    from tests.fakes import libhlml

    out = subprocess.run([sys.executable, "-c", BEFORE_SCRIPT, str(src), str(library)], capture_output=True,
                         text=True, env={**os.environ, libhlml.STATE_ENV: str(state)})
    return int(out.stdout.split()[-1]) if out.returncode == 0 and out.stdout.split() else None


def hpu_series(text: bytes) -> int:
    return sum(1 for line in text.decode().splitlines() if line.startswith("gaudi_hpu_")
               and not line.startswith(("gaudi_hpu_cost", "gaudi_hpu_idle_cost")))


def hlml_backend(tmp: Path, devices: int):
    import pyhlml

    from exporter.backends.hlml import HlmlBackend
    from tests.fakes import libhlml

    state = tmp / f"state-{devices}.txt"
    libhlml.write_state(state, [libhlml.gaudi3(i) for i in range(devices)], driver_version="1.22.1-97ec1a4")
    os.environ[libhlml.STATE_ENV] = str(state)
    libhlml.point_pyhlml_at(pyhlml, libhlml.build(tmp))
    backend = HlmlBackend(module=pyhlml)
    backend.open()
    return backend


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[8, 64])
    p.add_argument("--ticks", type=int, default=240)
    p.add_argument("--before-ref", default="main", help="git ref of the exporter before issue 11")
    args = p.parse_args()
    from exporter.backends.simulated import SimulatedBackend

    assert all(n.removesuffix("_total") in {m.family for m in catalogue.METRICS.values()} | set(catalogue.METRICS)
               for n in NEW_IN_ISSUE_11)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"CPU per tick (process time, {args.ticks} ticks, slow signals every 12th tick), milliseconds")
        print(f"{'backend':<34}{'HPUs':>5}{'fast med':>10}{'fast p99':>10}{'slow med':>10}{'slow p99':>10}")
        for n in args.devices:
            for label, backend in (("simulated (baseline)", SimulatedBackend(devices=n, interval=5.0)),
                                   ("hlml: real pyhlml + C stand-in", hlml_backend(tmp, n))):
                fast, slow = tick_cpu(make_loop(backend), args.ticks)
                print(f"{label:<34}{n:>5}{statistics.median(fast) * 1e3:>10.2f}{pct(fast, 0.99) * 1e3:>10.2f}"
                      f"{statistics.median(slow) * 1e3:>10.2f}{pct(slow, 0.99) * 1e3:>10.2f}")
                backend.close()
        from tests.fakes import libhlml

        print("\nSeries per 8-HPU node, hlml backend through the C stand-in (HPU collector only, no process_*):")
        before = series_at(args.before_ref, tmp, libhlml.build(tmp), tmp / "state-8.txt")
        print(f"  before issue 11 ({args.before_ref}, per-port only, no knob): HPU series "
              f"{before if before is not None else 'n/a (ref not found)'}")
        for mode in ("per-port", "summary"):
            backend = hlml_backend(tmp, 8)
            loop = make_loop(backend, mode)
            loop.tick()
            text = loop.tick().text
            total, without_new = series_counts(text)
            backend.close()
            print(f"  after, --collector.hpu.nic-ports={mode:<9}: {hpu_series(text)} HPU series "
                  f"({hpu_series(text) - (total - without_new)} without the new families); whole node "
                  f"{total} incl. host, cost and exporter series")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
