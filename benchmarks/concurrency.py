"""Benchmark: the HTTP server under concurrent clients, against the previous server measured in the same run.

    python benchmarks/concurrency.py [--baseline-ref REF] [--seconds 20] [--rate 5] [--idle 2000]

Phase 1, for --seconds: 50 clients that open a new connection per scrape and 50 keep-alive clients (as Prometheus
scrapes), each at --rate scrapes/s from a random phase, while 200 slow clients hold half-sent requests open
(reopened when the server closes them). Phase 2: 20 clients send 99 header lines of 65 KB each. Phase 3: --idle
idle connections held open, then scrapes. Prints scrape latency p50/p99/max, errors (5 s timeouts, resets,
non-200), threads, RSS and server CPU. The baseline is the exporter at --baseline-ref (default: the stdlib server
with backlog 5), run from a temporary git worktree. Targets on a 2-core machine: 0 errors, p99 < 50 ms,
RSS < 128 MiB (the DaemonSet's limit) with 2,000 idle connections. Everything runs on 127.0.0.1; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.procs import free_port, wait_http  # noqa: E402

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: identity\r\n\r\n"
CLIENT_TIMEOUT = 5.0


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB."""
    cur = peak = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def paced(rate: float, until: float):
    """Ticks at ``rate`` per second from a random phase, as Prometheus spreads its targets' scrapes."""
    next_at = time.monotonic() + random.uniform(0, 1 / rate)
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= until:
            return
        yield
        next_at += 1 / rate


async def scrape_new_connections(port: int, rate: float, until: float, stats: Stats) -> None:
    async for _ in paced(rate, until):
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                status = await read_response(reader)
            writer.close()
            if status != 200:
                stats.error(f"HTTP {status}")
            else:
                stats.latencies.append(time.perf_counter() - t0)
        except TimeoutError:
            stats.error("timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            stats.error(type(e).__name__)


async def scrape_keep_alive(port: int, rate: float, until: float, stats: Stats) -> None:
    reader = writer = None
    async for _ in paced(rate, until):
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST)
                status = await read_response(reader)
            if status != 200:
                stats.error(f"HTTP {status}")
            else:
                stats.latencies.append(time.perf_counter() - t0)
        except TimeoutError:
            stats.error("timeout")
            writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            stats.error(type(e).__name__)
            writer = None
    if writer is not None:
        writer.close()


async def hold_slow(port: int, until: float, counter: list[int]) -> None:
    """A half-sent request, one header byte every 2 s; reopened when the server closes it."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while time.monotonic() < until:
                await asyncio.sleep(2)
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof():
                    break
            writer.close()
            counter[0] += 1
        except (OSError, asyncio.IncompleteReadError):
            counter[0] += 1
            await asyncio.sleep(0.2)


async def load_phase(port: int, seconds: float, rate: float) -> tuple[Stats, int]:
    until = time.monotonic() + seconds
    stats = Stats()
    reopened = [0]
    slow = [asyncio.create_task(hold_slow(port, until, reopened)) for _ in range(200)]
    await asyncio.sleep(1.0)
    clients = [scrape_new_connections(port, rate, until, stats) for _ in range(50)]
    clients += [scrape_keep_alive(port, rate, until, stats) for _ in range(50)]
    await asyncio.gather(*clients)
    for t in slow:
        t.cancel()
    await asyncio.gather(*slow, return_exceptions=True)
    return stats, reopened[0]


async def idle_phase(port: int, n: int, hold: float, pid: int) -> dict:
    conns = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            conns.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CLIENT_TIMEOUT))
        except (OSError, TimeoutError):
            failed += 1

    for i in range(0, n, 100):  # in batches: a full listen queue makes each connect wait for SYN retries
        await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    await asyncio.sleep(hold)
    stats = Stats()
    await scrape_keep_alive(port, 20, time.monotonic() + 2, stats)
    rss, peak = rss_mb(pid)
    out = {"opened": len(conns), "failed": failed, "threads": threads(pid), "rss": rss, "peak": peak,
           "scrape_p99": pct(stats.latencies, 0.99), "scrape_errors": sum(stats.errors.values())}
    await asyncio.sleep(0)
    closed_by_server = sum(1 for r, _ in conns if r.at_eof())
    out["closed_by_server"] = closed_by_server
    for _, w in conns:
        w.close()
    return out


async def header_flood(port: int, pid: int, conns: int = 20, lines: int = 99) -> dict:
    """Clients that send 99 header lines of 65 KB each and never finish the request (issue 15, item 2)."""
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            for i in range(lines):
                writer.write(b"X-Flood-%d: " % i + b"a" * 65000 + b"\r\n")
                await asyncio.wait_for(writer.drain(), CLIENT_TIMEOUT)
            await asyncio.sleep(3)  # hold the half-sent request
            writer.close()
        except (OSError, TimeoutError):
            refused += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    stats = Stats()
    await scrape_keep_alive(port, 20, time.monotonic() + 1, stats)
    rss, peak = rss_mb(pid)
    return {"refused": refused, "rss": rss, "peak": peak, "scrape_errors": sum(stats.errors.values()),
            "scrapes": len(stats.latencies)}


@contextlib.contextmanager
def exporter(cwd: Path, port: int):
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(cwd)}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--backend", "simulated", "--simulated.devices", "8",
                             "--pricing.static.usd-per-hour", "19.92", "--interval", "5",
                             "--web.listen-address", f"127.0.0.1:{port}"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name: str, cwd: Path, args: argparse.Namespace) -> None:
    port = free_port()
    with exporter(cwd, port) as proc:
        base_rss, _ = rss_mb(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        stats, reopened = asyncio.run(load_phase(port, args.seconds, args.rate))
        cpu = cpu_seconds(proc.pid) - cpu0
        load_rss, load_peak = rss_mb(proc.pid)
        lat = stats.latencies
        errors = sum(stats.errors.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors.items())) or "-"
        print(f"| {name} | load | {len(lat)} | {pct(lat, 0.5) * 1e3:.1f} | {pct(lat, 0.99) * 1e3:.1f} | "
              f"{max(lat, default=float('nan')) * 1e3:.1f} | {errors} ({detail}) | {threads(proc.pid)} | "
              f"{base_rss:.0f} -> {load_rss:.0f} (peak {load_peak:.0f}) | server CPU {cpu / args.seconds:.2f} cores, "
              f"{cpu / max(1, len(lat)) * 1e3:.2f} ms/scrape; slow clients reconnected {reopened}x |", flush=True)
        flood = asyncio.run(header_flood(port, proc.pid))
        print(f"| {name} | header flood | {flood['scrapes']} | - | - | - | {flood['scrape_errors']} | "
              f"{threads(proc.pid)} | {flood['rss']:.0f} (peak {flood['peak']:.0f}) | 20 clients x 99 x 65 KB header "
              f"lines: {flood['refused']} cut off by the server |", flush=True)
        idle = asyncio.run(idle_phase(port, args.idle, args.idle_seconds, proc.pid))
        print(f"| {name} | {idle['opened']} idle | - | - | {idle['scrape_p99'] * 1e3:.1f} (p99 with idle open) | - | "
              f"{idle['scrape_errors'] + idle['failed']} (connect failures {idle['failed']}) | {idle['threads']} | "
              f"{idle['rss']:.0f} (peak {idle['peak']:.0f}) | closed by server after {args.idle_seconds:g}s: "
              f"{idle['closed_by_server']} |", flush=True)


def main() -> int:
    random.seed(6)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", default="bc82e7c",
                   help="git revision of the baseline server (default: the stdlib server, backlog 5)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=5.0, help="scrapes per second per client")
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--idle-seconds", type=float, default=15.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client side holds 2,000+ sockets too
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; 50 new-connection + 50 keep-alive "
          f"clients at {args.rate:g}/s each for {args.seconds:g}s, 200 slow half-sent requests; then {args.idle} idle")
    print("| server | phase | scrapes | p50 ms | p99 ms | max ms | errors | threads | RSS MiB | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="gaudi-bench-") as tmp:
        wt = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), args.baseline_ref],
                       check=True, capture_output=True)
        try:
            measure(f"baseline {args.baseline_ref}", wt, args)
            measure("this tree", REPO, args)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(wt)], capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
