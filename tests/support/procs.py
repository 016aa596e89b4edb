"""Start real processes for end-to-end tests: the exporter, Prometheus and Alertmanager, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
                or "/usr/bin/prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None, **kw) -> requests.Response:
    """Poll ``url`` until it answers 200; fail early with the process' output if it died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{out[-4000:]}")
        try:
            r = requests.get(url, timeout=2, **kw)
            if r.status_code == 200:
                return r
            last = RuntimeError(f"HTTP {r.status_code}")
        except requests.RequestException as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s: {last}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def exporter(args: list[str], *, env: dict[str, str] | None = None, port: int | None = None,
             wait: bool = True) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``python -m exporter`` with ``args`` on a free loopback port; yields (process, base URL)."""
    port = port or free_port()
    full_env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", **(env or {})}
    cmd = [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_http(base + "/healthz", proc=proc)
        yield proc, base
    finally:
        _stop(proc)


@contextlib.contextmanager
def prometheus(tmp: Path, targets: dict[str, list[str]], *, rule_files: list[Path] = (),
               alertmanager: str | None = None, scrape_interval: str = "1s",
               evaluation_interval: str = "1s") -> Iterator[str]:
    """Run a real Prometheus scraping ``targets`` ({job: ["127.0.0.1:port"]}); yields its base URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg: dict = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval,
                   "external_labels": {"cluster": "test"}},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]} for job, t in targets.items()],
        "rule_files": [str(p) for p in rule_files],
    }
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.split("//", 1)[-1]]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with _serving([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s", "--log.level=warn"],
                  port) as base:
        yield base


@contextlib.contextmanager
def _serving(cmd: list[str], port: int, ready: str = "/-/ready") -> Iterator[str]:
    """Start a Prometheus-style server, wait for its readiness path, stop it on the way out."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + ready, proc=proc)
        yield base
    finally:
        _stop(proc)


@contextlib.contextmanager
def alertmanager(tmp: Path, config: dict | str) -> Iterator[str]:
    """Run a real Alertmanager (no gossip port) with ``config``; yields its base URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    (tmp / "alertmanager.yml").write_text(text)
    with _serving([ALERTMANAGER, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
                  port) as base:
        yield base


@contextlib.contextmanager
def victoria_metrics(data: Path, *flags: str) -> Iterator[str]:
    """Run a single-node VictoriaMetrics on ``data`` that answers with what it holds now (no 30 s latency offset)."""
    port = free_port()
    with _serving(["victoria-metrics", f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}",
                   "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=WARN", *flags],
                  port, ready="/health") as base:
        yield base


def query(prom: str, expr: str, at: float | None = None) -> list[dict]:
    """Instant query; returns the result vector (raises on a PromQL error)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = str(at)
    r = requests.get(prom + "/api/v1/query", params=params, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body.get('error')}")
    return body["data"]["result"]


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; returns it or raises with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s")
