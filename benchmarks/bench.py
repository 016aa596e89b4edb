"""Benchmark: /metrics latency, CPU per collection tick and peak RSS, against node_exporter measured in the same run.

    python benchmarks/bench.py [--scrapes 2000] [--devices 8 64]

Prints figures; asserts nothing (targets: median scrape < 1 ms and >= 10x faster than node_exporter; a tick under
20 ms of CPU for 8 HPUs; RSS under 60 MB). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.procs import free_port, wait_http  # noqa: E402


def scrape_latencies(port: int, n: int, path: str = "/metrics") -> list[float]:
    """n scrapes over one keep-alive connection, as Prometheus does; seconds each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tick_cpu(devices: int, ticks: int = 200) -> tuple[float, float]:
    """CPU seconds per tick of the full node pipeline (simulated read, cost engine, render), median and p99."""
    from exporter.backends.simulated import SimulatedBackend
    from exporter.collectors.host import HostCollector
    from exporter.collectors.hpu import HpuCollector
    from exporter.collectors.pricing import PricingCollector
    from exporter.loop import Loop
    from exporter.pricing.base import FixedSource, NodeIdentity, Price

    backend = SimulatedBackend(devices=devices, interval=5.0)
    price = Price(19.92, "static", time.time())
    loop = Loop([HpuCollector(backend, 60.0), HostCollector(),
                 PricingCollector(FixedSource("static", price), NodeIdentity())],
                interval=5.0, version="bench", backend="simulated")
    samples = []
    for _ in range(ticks):
        t0 = time.process_time()
        loop.tick()
        samples.append(time.process_time() - t0)
    return statistics.median(samples), pct(samples, 0.99)


def run_exporter(devices: int, scrapes: int) -> dict:
    port = free_port()
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--backend", "simulated", "--simulated.devices",
                             str(devices), "--pricing.static.usd-per-hour", "19.92", "--interval", "5",
                             "--web.listen-address", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        scrape_latencies(port, 50)  # warm-up
        lat = scrape_latencies(port, scrapes)
        size = len(subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True).stdout)
        return {"median": statistics.median(lat), "p99": pct(lat, 0.99), "rss": rss_peak_mb(proc.pid),
                "bytes": size}
    finally:
        proc.terminate()
        proc.wait(10)


def run_node_exporter(scrapes: int) -> dict | None:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not binary:
        return None
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", proc=proc)
        scrape_latencies(port, 10)
        lat = scrape_latencies(port, scrapes)
        return {"median": statistics.median(lat), "p99": pct(lat, 0.99), "rss": rss_peak_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scrapes", type=int, default=2000)
    p.add_argument("--baseline-scrapes", type=int, default=1000)
    p.add_argument("--devices", type=int, nargs="+", default=[8, 64])
    args = p.parse_args()
    base = run_node_exporter(args.baseline_scrapes)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if base:
        print(f"node_exporter baseline ({args.baseline_scrapes} scrapes): median {base['median'] * 1e3:.3f} ms, "
              f"p99 {base['p99'] * 1e3:.3f} ms, peak RSS {base['rss']:.1f} MB")
    else:
        print("node_exporter not installed: no baseline (apt-get install prometheus-node-exporter)")
    print("| HPUs | scrape median | scrape p99 | vs node_exporter | exposition | CPU per tick (median/p99) "
          "| peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.devices:
        r = run_exporter(n, args.scrapes)
        cpu_med, cpu_p99 = tick_cpu(n)
        ratio = f"{base['median'] / r['median']:.0f}x faster" if base else "n/a"
        print(f"| {n} | {r['median'] * 1e3:.3f} ms | {r['p99'] * 1e3:.3f} ms | {ratio} "
              f"| {r['bytes'] / 1024:.0f} KiB | {cpu_med * 1e3:.2f} / {cpu_p99 * 1e3:.2f} ms | {r['rss']:.1f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
