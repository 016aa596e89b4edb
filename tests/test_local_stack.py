"""The README's demo (`make demo` = deploy/local/stack.py), run headless for a bounded time: every part answers,
the rules are loaded, an alert travels Prometheus -> Alertmanager -> the terminal receiver, and Ctrl-C or the end
of --duration leaves nothing running."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from exporter import catalogue
from tests.support.procs import REPO, query, wait_for

STACK = REPO / "deploy" / "local" / "stack.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
                       reason="needs Debian's prometheus and prometheus-alertmanager"),
]


class Demo:
    """The stack as a user runs it, with its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([sys.executable, str(STACK), "--no-install", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.urls: dict[str, str] = {}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _lines_until(self, timeout: float):
        """The demo's lines as they come, until it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                yield self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return

    def wait_line(self, prefix: str, timeout: float = 120) -> str:
        for line in self._lines_until(timeout):
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} from the demo:\n" + "".join(self.output)[-4000:])

    def wait_ready(self, timeout: float = 120) -> dict[str, str]:
        for line in self._lines_until(timeout):
            if m := re.match(r"\s+URL (\w+)\s+(http://127\.0\.0\.1:\d+)", line):
                self.urls[m.group(1)] = m.group(2)
            if line.startswith("[demo] ready"):
                return self.urls
        raise AssertionError("the demo did not come up:\n" + "".join(self.output)[-4000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _listening(url: str) -> bool:
    host, port = url.split("//", 1)[1].split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def _rule_group_names() -> set[str]:
    names = set()
    for f in (REPO / "alerts" / "build").glob("*.yaml"):
        names |= {g["name"] for g in yaml.safe_load(f.read_text())["groups"]}
    return names


def _check_parts_answer(urls: dict[str, str]) -> None:
    assert set(urls) == {"exporter", "market", "prometheus", "alertmanager", "receiver"}
    metrics = requests.get(urls["exporter"] + "/metrics", timeout=5).text
    build_info = catalogue.get("gaudi_exporter_build_info").name
    assert re.search(rf'^{build_info}{{[^}}]*backend="simulated"', metrics, re.M)
    assert len(re.findall(rf'^{catalogue.get("gaudi_hpu_up").name}{{', metrics, re.M)) == 8
    (price,) = re.findall(rf'^{catalogue.get("gaudi_node_price_usd_per_hour").name}{{([^}}]*)}} (\S+)', metrics,
                          re.M)
    assert float(price[1]) == pytest.approx(19.92)
    assert re.search(r'source="[^"]+"', price[0]), "the price carries no source"
    market = requests.get(urls["market"] + "/metrics", timeout=5).text
    spot = catalogue.get("gaudi_spot_market_price_usd_per_hour").name
    assert re.search(rf'^{spot}{{[^}}]*source="sample"', market, re.M), "sample prices must say so"
    prom = urls["prometheus"]

    def up_jobs():
        active = requests.get(prom + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return {t["labels"]["job"] for t in active if t["health"] == "up"} == {"gaudi-exporter",
                                                                              "gaudi-exporter-market"}

    wait_for(up_jobs, 60, what="both targets (exporter and market watcher) up")
    groups = requests.get(prom + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {g["name"] for g in groups} == _rule_group_names()
    assert all(r["health"] != "err" for g in groups for r in g["rules"]), "a rule fails to evaluate"
    alertmanagers = wait_for(lambda: requests.get(prom + "/api/v1/alertmanagers", timeout=5).json()["data"]
                             ["activeAlertmanagers"], 30, what="Prometheus found Alertmanager")
    assert urls["alertmanager"].split("//")[1] in alertmanagers[0]["url"]
    assert requests.get(urls["alertmanager"] + "/api/v2/status", timeout=5).json()["cluster"]["status"]
    assert "notifications" in requests.get(urls["receiver"], timeout=5).json()
    # recording rules produce data
    assert wait_for(lambda: query(prom, "node:gaudi_cost_efficiency_ratio:avg5m"), 60, what="recording rule")


def test_demo_degraded_fires_an_efficiency_alert_to_the_terminal_and_ctrl_c_stops_everything():
    demo = Demo("--profile", "degraded", "--alert-for", "5s", "--duration", "300", "--status-every", "10")
    try:
        urls = demo.wait_ready()
        _check_parts_answer(urls)

        def delivered():
            notes = requests.get(urls["receiver"], timeout=5).json()["notifications"]
            return [a for n in notes for a in n["alerts"]
                    if a["labels"]["alertname"] == "GaudiEfficiencyBelowFloor" and a["status"] == "firing"]

        (alert, *_) = wait_for(delivered, 180, interval=2, what="GaudiEfficiencyBelowFloor reached the receiver")
        assert alert["labels"]["cluster"] == "demo"
        wait_for(lambda: any("FIRING GaudiEfficiencyBelowFloor" in line for line in demo.output), 10,
                 what="the alert printed in the terminal")
    finally:
        demo.stop()
    assert demo.proc.returncode == 0, "".join(demo.output)[-3000:]
    assert "[demo] stopped\n" in demo.output
    still = [name for name, url in demo.urls.items() if _listening(url)]
    assert still == [], f"still listening after Ctrl-C: {still}"


def test_demo_with_stock_rules_stops_by_itself_after_duration(tmp_path: Path):
    run_dir = tmp_path / "run"
    demo = Demo("--duration", "15", "--status-every", "5", "--run-dir", str(run_dir))
    try:
        urls = demo.wait_ready()
        groups = requests.get(urls["prometheus"] + "/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in groups} == _rule_group_names()
        loaded = {Path(g["file"]).resolve() for g in groups}
        assert loaded == {p.resolve() for p in (REPO / "alerts" / "build").glob("*.yaml")}
        assert demo.proc.wait(timeout=60) == 0, "".join(demo.output)[-3000:]
    finally:
        demo.stop()
    assert re.search(r"\[demo\] targets up 2/2", "".join(demo.output))
    assert [name for name, url in demo.urls.items() if _listening(url)] == []
    assert (run_dir / "exporter.log").exists(), "--run-dir keeps the logs"


def test_ctrl_c_while_starting_stops_everything_without_waiting_for_the_stack(tmp_path: Path):
    """Ctrl-C while a part is still coming up (here a Prometheus that, like one replaying a long write-ahead log,
    runs but is not ready yet) ends the demo then and there, and stops what it had started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prometheus").write_text("#!/bin/sh\n# running, never ready\nexec sleep 600\n")
    (bin_dir / "prometheus").chmod(0o755)
    demo = Demo("--run-dir", str(tmp_path / "run"), env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    try:
        demo.wait_line("[demo] starting")
        def parts():
            children = psutil.Process(demo.proc.pid).children()
            return children if {"sleep", "prometheus-alertmanager"} <= {c.name() for c in children} else None

        started = wait_for(parts, 30, what="the demo started its parts")
        assert len(started) == 4, [c.name() for c in started]  # exporter, market watcher, Alertmanager, Prometheus
    finally:
        demo.stop()  # SIGINT, as Ctrl-C
    output = "".join(demo.output)
    assert demo.proc.returncode == 130, output[-3000:]
    assert "[demo] interrupted before the stack was up\n" in demo.output and "[demo] stopped\n" in demo.output
    assert "[demo] ready\n" not in demo.output
    assert [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == [], \
        "parts still running after Ctrl-C"
