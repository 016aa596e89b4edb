"""The local demo stack: a simulated Gaudi 3 node, the market watcher, Prometheus and Alertmanager on 127.0.0.1.

    python3 deploy/local/stack.py [--profile degraded --alert-for 1m]   (= make demo [PROFILE=degraded ALERT_FOR=1m])

Everything real except the hardware: the exporter runs with 8 simulated HPUs (labelled backend="simulated") priced
at the built-in Intel Tiber AI Cloud Gaudi 3 rate; the market watcher reads sample spot prices (labelled
source="sample"); a simulated training job (deploy/local/simulated_training.py, the real exporter.training code)
gives the cost advisor something to compare; Debian's Prometheus loads the project's rules and sends alerts to
Debian's Alertmanager, routed by alerts/alertmanager.yaml to a small webhook receiver that prints them here.
Ctrl-C, SIGTERM, SIGHUP or a closed output (`| head`) stops everything and removes the run directory.

On a fresh Debian machine it first installs what is missing (apt: prometheus, prometheus-alertmanager,
python3-venv; a venv .venv with `pip install -e .[aws,advisor,dashboards]`, what the commands it prints need) and
re-runs itself inside the venv. --no-install skips that and uses the current Python. Until then only the standard
library is used.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
SAMPLE_MARKET = REPO / "deploy" / "local" / "sample-spot-price-history.json"
PROFILES = ("training", "idle", "bursty", "degraded")
# Built-in price entry of the simulated node (exporter/pricing/price_list.py): 8-card Gaudi 3 bare metal, 19.92 USD/h.
PRICE_ENTRY = "intel-tiber-bm-gnr-gaudi3-smc-2026"
# aws: boto3 for the price sources; advisor and dashboards: the `advise`, `report run` and Grafana files it prints
DEMO_EXTRAS = "aws,advisor,dashboards"
APT_PACKAGES = {"prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager"}
# Preferred loopback ports (next to, not on, the usual ones, which a packaged Prometheus may hold); a busy one is
# replaced by a free one. --ports BASE uses BASE, BASE+1, ... in this order instead.
PORTS = {"exporter": 19654, "market": 19655, "training": 19656, "prometheus": 19090, "alertmanager": 19093,
         "receiver": 19095}
EXPORTER_JOB = "gaudi-exporter"  # the job the generated rules select on (alerts/thresholds.yaml)
MARKET_JOB = "gaudi-exporter-market"
TRAINING_JOB = "gaudi-training"  # the scrape job of the training process; its own job label is TRAINING_NAME
TRAINING_NAME = "demo-simulated"
TRAINING_BATCH_SIZES = (32, 128)
TRAINING_PHASE_SECONDS = 20
# rate() over a counter that moves once per tick is exact when every scrape interval holds a whole number of ticks
# (README, "Cost rates"): 5 s scrapes, 2.5 s ticks.
SCRAPE_SECONDS = 5
TICK_SECONDS = 2.5
TRAINING_SCRAPE_SECONDS = 1  # so the advisor has its 10 intervals per setting within a demo's first minute


class StackError(RuntimeError):
    pass


class Interrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or a closed output arrived before the stack was up."""


class Console:
    """The demo's terminal output, which must never stop the clean-up.

    A write that fails (the reader of a pipe exited, as `| head` or a `| tee` killed by the same Ctrl-C; the
    terminal hung up) marks the output closed, calls ``on_closed`` (the demo then stops), says so on stderr once,
    and points file descriptor 1 at /dev/null so that nothing later (the interpreter's exit flush included) fails
    on it again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.on_closed = lambda: None

    def write(self, text: str) -> None:
        with self.lock:  # one write per line: threads (the receiver's) must not interleave
            if self.closed:
                return
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (OSError, ValueError):
                self._close()

    def _close(self) -> None:
        self.closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        try:
            sys.stderr.write("[demo] output closed: stopping\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        self.on_closed()


CONSOLE = Console()


def log(msg: str) -> None:
    CONSOLE.write(f"[demo] {msg}\n")


# --- installation (standard library only) ---------------------------------------------------------------------------

def _as_root(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", *cmd]
    raise StackError(f"need root to run: {' '.join(cmd)} (run it yourself, then use --no-install)")


def install(venv: Path = VENV) -> Path:
    """Install what is missing; return the venv's python."""
    apt = [pkg for binary, pkg in APT_PACKAGES.items() if shutil.which(binary) is None]
    venv_python = venv / "bin" / "python"
    if not venv_python.exists():
        probe = subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True)
        if probe.returncode != 0:
            apt.append("python3-venv")
    if apt:
        if shutil.which("apt-get") is None:
            raise StackError(f"missing {', '.join(apt)} and no apt-get to install them")
        log(f"installing {' '.join(apt)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(_as_root(["apt-get", "update", "-q"]), check=True, env=env)
        subprocess.run(_as_root(["apt-get", "install", "-y", "-q", "--no-install-recommends", *apt]), check=True,
                       env=env)
    if not venv_python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp = venv / ".gaudi-demo-installed"  # holds the extras installed
    pyproject = REPO / "pyproject.toml"
    if (not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime
            or stamp.read_text().strip() != DEMO_EXTRAS):
        log(f"installing gaudi-exporter into the venv (pip install -e .[{DEMO_EXTRAS}])")
        subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "-e", f"{REPO}[{DEMO_EXTRAS}]"], check=True)
        stamp.write_text(DEMO_EXTRAS + "\n")
    return venv_python


# --- helpers ---------------------------------------------------------------------------------------------------------

def pick_port(preferred: int) -> int:
    """``preferred`` unless something listens on it, else a free port. SO_REUSEADDR, as every server of the stack
    binds: a port whose last connections are still in TIME_WAIT (a restart within a minute) is free for them."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StackError("no free port on 127.0.0.1")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def alert_text(alert: dict) -> str:
    """One line for an alert (webhook or Alertmanager API form): name, where, summary and the description, which
    carries the numbers."""
    labels = alert.get("labels", {})
    where = " ".join(f"{k}={labels[k]}" for k in ("node", "instance", "hpu", "namespace") if k in labels)
    notes = alert.get("annotations", {})
    text = " ".join(x for x in (notes.get("summary", "").strip(), notes.get("description", "").strip()) if x)
    return (f"{labels.get('alertname', '?')} severity={labels.get('severity', '?')} {where} - "
            + " ".join(text.split()))


class InhibitionWatcher:
    """Alertmanager sends no notification for an inhibited alert, so the receiver never hears of it: read
    Alertmanager's API and print a line when an alert becomes inhibited (and by what)."""

    def __init__(self, alertmanager: str, out: Console = CONSOLE):
        self.url = alertmanager + "/api/v2/alerts"
        self.out = out
        self.reported: set[str] = set()

    def poll(self) -> None:
        try:
            alerts = get_json(self.url)
        except (OSError, ValueError):
            return
        names = {a.get("fingerprint"): a.get("labels", {}).get("alertname", "?") for a in alerts}
        inhibited = {a["fingerprint"]: a for a in alerts if a.get("status", {}).get("inhibitedBy")}
        for fp, alert in inhibited.items():
            if fp not in self.reported:
                by = ", ".join(sorted({names.get(f, f) for f in alert["status"]["inhibitedBy"]}))
                self.out.write(f"[alert] INHIBITED {alert_text(alert)} (inhibited by {by}: Alertmanager sends "
                               "no notification for it while that fires)\n")
        self.reported = set(inhibited)


class Receiver(http.server.ThreadingHTTPServer):
    """Alertmanager webhook receiver: prints each notification; GET / returns what it got, as JSON."""

    daemon_threads = True

    def __init__(self, port: int, out: Console = CONSOLE):
        self.notifications: list[dict] = []
        self.out = out
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _ReceiverHandler)


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except (ValueError, json.JSONDecodeError):
            self.send_error(400, "expected Alertmanager's webhook JSON")
            return
        receiver = self.path.strip("/") or body.get("receiver", "")
        with self.server.lock:
            self.server.notifications.append({"receiver": receiver, **body})
        for alert in body.get("alerts", []):
            self.server.out.write(f"[alert -> {receiver}] {alert.get('status', '?').upper()} {alert_text(alert)}\n")
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            data = json.dumps({"notifications": self.server.notifications}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        pass


# --- configuration of the parts -----------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """A Prometheus duration ("90s", "1h30m") in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise StackError(f"not a duration: {text!r} (e.g. 30s, 1m, 1h30m)")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def shortened(durations: list[str], alert_for: str) -> dict[str, str]:
    """Each distinct duration -> ``alert_for`` plus one second per rank: every alert fires within a demo, and
    durations keep their order (the thresholds require some to be longer than others, e.g. read errors than a
    lost HPU, so that an alert fires first and inhibits the other)."""
    base = int(duration_seconds(alert_for))
    ranked = sorted(set(durations), key=duration_seconds)
    return {d: f"{base + i}s" for i, d in enumerate(ranked)}


def shorten_fors(thresholds: dict, alert_for: str) -> dict:
    """The thresholds tree with every `for` duration (keys `for` and `*_for`) replaced as ``shortened`` says."""
    def is_for(key, value) -> bool:
        return (key == "for" or key.endswith("_for")) and isinstance(value, str)

    def durations(node) -> list[str]:
        if isinstance(node, dict):
            return [d for k, v in node.items() for d in ([v] if is_for(k, v) else durations(v))]
        return []

    new = shortened(durations(thresholds), alert_for)

    def shorten(node):
        if isinstance(node, dict):
            return {k: (new[v] if is_for(k, v) else shorten(v)) for k, v in node.items()}
        return node

    return shorten(thresholds)


def build_rules(python: str, out: Path, alert_for: str | None) -> list[Path]:
    """The project's rules: alerts/build/*.yaml as built, or rebuilt with every `for` shortened to about
    ``alert_for``."""
    if alert_for is None:
        files = sorted((REPO / "alerts" / "build").glob("*.yaml"))
        if not files:
            raise StackError("alerts/build/ holds no rule files: run `gaudi-exporter rules build`")
        return files
    import yaml  # the venv has it by now

    thresholds = shorten_fors(yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text()), alert_for)
    out.mkdir(parents=True, exist_ok=True)
    (out / "thresholds.yaml").write_text(yaml.safe_dump(thresholds, sort_keys=False))
    subprocess.run([python, "-m", "alerts.build", "--thresholds", str(out / "thresholds.yaml"), "--out",
                    str(out / "rules"), "--prometheusrule", str(out / "prometheusrule.yaml")], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL)
    return sorted((out / "rules").glob("*.yaml"))


def alertmanager_config(receiver_url: str) -> dict:
    """alerts/alertmanager.yaml with every receiver pointed at the local webhook receiver (path = receiver name)."""
    import yaml

    config = yaml.safe_load((REPO / "alerts" / "alertmanager.yaml").read_text())
    config.get("global", {}).pop("slack_api_url_file", None)
    config["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": f"{receiver_url}/{r['name']}",
                                                                     "send_resolved": True}]}
                           for r in config["receivers"]]
    return config


def prometheus_config(targets: dict[str, str], rule_files: list[Path], alertmanager: str,
                      intervals: dict[str, float] | None = None) -> dict:
    """Scrape ``targets`` ({job: address}) every SCRAPE_SECONDS, or ``intervals[job]`` seconds."""
    def job(name: str, addr: str) -> dict:
        cfg = {"job_name": name, "static_configs": [{"targets": [addr]}]}
        if name in (intervals or {}):
            cfg["scrape_interval"] = f"{intervals[name]:g}s"
        return cfg

    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s",
                   "external_labels": {"cluster": "demo"}},
        "scrape_configs": [job(name, addr) for name, addr in targets.items()],
        "rule_files": [str(p) for p in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
    }


# --- the stack -------------------------------------------------------------------------------------------------------

class Stack:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> None:
        logfile = self.run_dir / f"{name}.log"
        self.logs[name] = logfile
        with open(logfile, "wb") as fh:
            # own process group: Ctrl-C goes to us, and we stop the children in order
            self.procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                                env={**os.environ, **(env or {})}, start_new_session=True)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(stack: Stack, urls: dict[str, str], timeout: float, stop: threading.Event) -> None:
    """Wait until every URL answers; ``stop`` (set by the signal handler) ends the wait at once."""
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    while pending:
        if stop.is_set():
            raise Interrupted
        if dead := stack.dead():
            raise StackError(f"{dead[0]} exited before it was ready:\n{stack.tail(dead[0])}")
        for name, url in list(pending.items()):
            if http_ok(url):
                del pending[name]
        if time.monotonic() > deadline:
            raise StackError(f"not ready within {timeout:.0f}s: {', '.join(pending)}")
        stop.wait(0.2)


def status(urls: dict[str, str], receiver: Receiver) -> str:
    prom = urls["prometheus"]
    try:
        targets = get_json(prom + "/api/v1/targets")["data"]["activeTargets"]
        groups = get_json(prom + "/api/v1/rules")["data"]["groups"]
        alerts = get_json(prom + "/api/v1/alerts")["data"]["alerts"]
    except (OSError, KeyError, ValueError) as e:
        return f"Prometheus did not answer: {e}"
    up = sum(t["health"] == "up" for t in targets)
    firing = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"})
    pending = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "pending"})
    return (f"targets up {up}/{len(targets)}, rule groups {len(groups)} "
            f"({sum(len(g['rules']) for g in groups)} rules), firing: {', '.join(firing) or 'none'}, "
            f"pending: {', '.join(pending) or 'none'}, notifications received: {len(receiver.notifications)}")


def prometheus_pages(base: str) -> str | None:
    """Where the running Prometheus serves its pages: "" (the current UI: /targets, /graph), "/classic" (Debian's
    2.42 build has only the classic UI, under /classic/...), or None when it serves neither (API only)."""
    for prefix in ("", "/classic"):
        if http_ok(f"{base}{prefix}/targets", timeout=3):
            return prefix
    return None


def alertmanager_has_ui(base: str) -> bool:
    """Debian's Alertmanager ships without its web application: / is a note, and the UI's script is missing."""
    return http_ok(base + "/script.js", timeout=3)


def graph_url(base: str, prefix: str, expr: str) -> str:
    return f"{base}{prefix}/graph?" + urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": "15m"})


def grafana_provisioning(out: Path, prometheus: str, dashboards_dir: Path) -> Path:
    """A Grafana provisioning directory for the demo: a Prometheus datasource on the demo's Prometheus and a
    dashboard provider that reads the built JSON where it is (what `dashboards build --provider-path` writes)."""
    from dashboards.build import datasource_yaml, provider_yaml  # the venv has grafanalib's deps by now

    (out / "datasources").mkdir(parents=True, exist_ok=True)
    (out / "dashboards").mkdir(parents=True, exist_ok=True)
    (out / "datasources" / "gaudi-demo.yaml").write_text(datasource_yaml(prometheus, name="Prometheus (demo)"))
    (out / "dashboards" / "gaudi-exporter.yaml").write_text(provider_yaml(str(dashboards_dir)))
    return out


def tool(python: str, name: str) -> str:
    """The console script ``name`` next to ``python`` (the venv's), else ``python -m exporter``."""
    script = Path(python).parent / name
    return str(script) if script.exists() else f"{python} -m exporter"


def banner(args: argparse.Namespace, urls: dict[str, str], run_dir: Path, python: str) -> str:
    prom, am = urls["prometheus"], urls["alertmanager"]
    try:
        version = get_json(prom + "/api/v1/status/buildinfo")["data"]["version"]
    except (OSError, KeyError, ValueError):
        version = "?"
    pages = prometheus_pages(prom)
    ui = {None: "API only", "": "web UI", "/classic": "classic web UI only"}[pages]
    if args.alert_for is None:
        rules_note = "alerts/build/*.yaml as built"
        timing = "with their built `for` (minutes to hours): add --alert-for 1m to see them fire within minutes"
    else:
        rules_note = f"alerts/ rebuilt with every `for` about {args.alert_for}, for the demo"
        timing = f"pending, then firing after about {args.alert_for}"
    if args.profile == "degraded":
        alerts_note = (f"GaudiEfficiencyBelowFloor, GaudiHpuLost, thermal and ECC alerts {timing}; "
                       "Alertmanager routes them here")
    else:
        alerts_note = (f"profile {args.profile} is healthy, few alerts fire; --profile degraded "
                       "(make demo PROFILE=degraded ALERT_FOR=1m) runs a node that wastes money")
    cost = "rate(gaudi_node_cost_usd_total[1m]) * 3600"
    lines = [
        "",
        f"gaudi-exporter demo is up (profile {args.profile}); logs and data in {run_dir}",
        f"  URL exporter     {urls['exporter']}/metrics   8 simulated Gaudi 3 HPUs (backend=\"simulated\"), "
        "19.92 USD/h",
        f"  URL market       {urls['market']}/metrics   market watcher on SAMPLE spot prices (source=\"sample\")",
        f"  URL training     {urls['training']}/metrics   SIMULATED training job {TRAINING_NAME} (sleeps, no "
        f"model), batch size {' and '.join(map(str, TRAINING_BATCH_SIZES))} in turn, {TRAINING_PHASE_SECONDS} s each",
        f"  URL prometheus   {prom}{'/api/v1/status/buildinfo' if pages is None else pages + '/graph'}   "
        f"Prometheus {version} ({ui})",
        f"  URL alertmanager {am}/api/v2/alerts   the alerts Alertmanager holds (JSON)",
        f"  URL receiver     {urls['receiver']}   alerts are printed below as they arrive",
        "What to look at:",
    ]
    if pages is not None:
        lines += [
            f"  {prom}{pages}/targets   all three targets UP",
            f"  {prom}{pages}/rules   the project's recording rules and alerts ({rules_note})",
            f"  {prom}{pages}/alerts   {alerts_note}",
            f"  {graph_url(prom, pages, cost)}   cost rate in USD/h: equal to the price, since each "
            f"{SCRAPE_SECONDS} s scrape holds {SCRAPE_SECONDS / TICK_SECONDS:g} whole ticks of {TICK_SECONDS:g} s",
        ]
    else:
        lines += [f"  {prom}/api/v1/alerts   {alerts_note}"]
    has_ui = alertmanager_has_ui(am)
    if has_ui:
        lines.append(f"  {am}/#/alerts   Alertmanager's alerts, inhibitions and silences")
    if shutil.which("amtool"):
        lines.append(f"  amtool --alertmanager.url={am} alert query   Alertmanager's alerts in the terminal"
                     + ("" if has_ui else " (this Alertmanager has no web UI, as Debian's)"))
    exe = tool(python, "gaudi-exporter")
    lines += [
        "Cost advisor and run report of the simulated job (about a minute after start, once both batch sizes ran):",
        f"  {exe} advise batch-size --prometheus {prom} --job {TRAINING_NAME} --range 10m",
        f"  {exe} report run --prometheus {prom} --job {TRAINING_NAME}   (writes {TRAINING_NAME}-report.md and "
        ".html here)",
        f"With Grafana (not part of the demo): provisioning files for this Prometheus and the built dashboards are in "
        f"{run_dir / 'grafana'}: copy datasources/*.yaml and dashboards/*.yaml into /etc/grafana/provisioning/ "
        "(README, \"Dashboards\")",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    python = sys.executable
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            raise StackError(f"{binary} not found (apt-get install prometheus prometheus-alertmanager, or run "
                             "without --no-install)")
    # From here on Ctrl-C (SIGINT), SIGTERM, SIGHUP (the terminal closed) and a closed output only set `stop`: every
    # wait below checks it, and the finally clause stops whatever has been started, whether the stack was up yet or
    # not.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    CONSOLE.on_closed = stop.set
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="gaudi-demo-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(run_dir)
    receiver: Receiver | None = None
    try:
        wanted = ({name: args.ports + i for i, name in enumerate(PORTS)} if args.ports else PORTS)
        ports = {name: pick_port(p) for name, p in wanted.items()}
        addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        urls = {name: f"http://{a}" for name, a in addr.items()}

        receiver = Receiver(ports["receiver"])
        threading.Thread(target=receiver.serve_forever, name="receiver", daemon=True).start()

        # a Ctrl-C here also reaches the rules build (same process group): it fails, and `stop` says why
        rule_files = build_rules(python, run_dir, args.alert_for)
        if stop.is_set():
            raise Interrupted
        (run_dir / "alertmanager.yml").write_text(json.dumps(alertmanager_config(urls["receiver"]), indent=1))
        (run_dir / "prometheus.yml").write_text(json.dumps(prometheus_config(
            {EXPORTER_JOB: addr["exporter"], MARKET_JOB: addr["market"], TRAINING_JOB: addr["training"]},
            rule_files, addr["alertmanager"], {TRAINING_JOB: TRAINING_SCRAPE_SECONDS}), indent=1))
        grafana_provisioning(run_dir / "grafana", urls["prometheus"], REPO / "dashboards" / "build")
        env = {"AWS_EC2_METADATA_DISABLED": "true"}
        stack.start("exporter", [python, "-m", "exporter", "--web.listen-address", addr["exporter"],
                                 "--backend", "simulated", "--simulated.devices", "8", "--simulated.model", "HL-325L",
                                 "--simulated.profile", args.profile, "--interval", f"{TICK_SECONDS:g}",
                                 "--pricing.source", "static", "--pricing.static.entry", PRICE_ENTRY,
                                 "--no-collector.spot"], env)
        stack.start("market", [python, "-m", "exporter", "--mode", "market", "--web.listen-address", addr["market"],
                               "--market.source", str(SAMPLE_MARKET)], env)
        stack.start("training", [python, str(REPO / "deploy" / "local" / "simulated_training.py"),
                                 "--job", TRAINING_NAME, "--port", str(ports["training"]),
                                 "--batch-sizes", ",".join(map(str, TRAINING_BATCH_SIZES)),
                                 "--phase-seconds", str(TRAINING_PHASE_SECONDS), "--exporter", urls["exporter"]], env)
        stack.start("alertmanager", ["prometheus-alertmanager", f"--config.file={run_dir / 'alertmanager.yml'}",
                                     f"--storage.path={run_dir / 'alertmanager'}",
                                     f"--web.listen-address={addr['alertmanager']}", "--cluster.listen-address=",
                                     "--log.level=warn"])
        stack.start("prometheus", ["prometheus", f"--config.file={run_dir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={run_dir / 'prometheus'}",
                                   f"--web.listen-address={addr['prometheus']}", "--rules.alert.resend-delay=5s",
                                   "--log.level=warn"])
        log(f"starting exporter, market watcher, simulated training job, Alertmanager and Prometheus in {run_dir} "
            "(Ctrl-C stops)")
        wait_ready(stack, {"exporter": urls["exporter"] + "/healthz", "market": urls["market"] + "/healthz",
                           "training": urls["training"] + "/metrics",
                           "alertmanager": urls["alertmanager"] + "/-/ready",
                           "prometheus": urls["prometheus"] + "/-/ready"}, timeout=60, stop=stop)
        CONSOLE.write(banner(args, urls, run_dir, python))
        log("ready")
        watcher = InhibitionWatcher(urls["alertmanager"])
        deadline = time.monotonic() + args.duration if args.duration else None
        next_status = time.monotonic() + args.status_every
        next_poll = 0.0
        while not stop.wait(0.5):
            if dead := stack.dead():
                raise StackError(f"{dead[0]} exited:\n{stack.tail(dead[0])}")
            now = time.monotonic()
            if now >= next_poll:
                watcher.poll()
                next_poll = now + 2
            if now >= next_status:
                log(status(urls, receiver))
                next_status = now + args.status_every
            if deadline and now >= deadline:
                break
        log(status(urls, receiver))
        return 0
    except (Interrupted, subprocess.CalledProcessError):
        if not stop.is_set():
            raise
        log("interrupted before the stack was up")
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    finally:
        # Nothing here may raise before everything is stopped: log() never does (Console), each step is guarded.
        log("stopping")
        try:
            stack.stop()
        finally:
            if receiver is not None:
                receiver.shutdown()
                receiver.server_close()
            if not args.run_dir and not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        log("stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=PROFILES, default="training", help="simulated workload (default %(default)s)")
    ap.add_argument("--alert-for", metavar="DURATION",
                    help="rebuild the rules with every alert's `for` shortened to DURATION (e.g. 1m; longer ones "
                         "a second more per step, to keep their order) so alerts fire in a demo; default: load "
                         "alerts/build/*.yaml as built")
    ap.add_argument("--duration", type=float, default=0, help="stop after SECONDS (default: run until Ctrl-C)")
    ap.add_argument("--status-every", type=float, default=30, help="print a status line every SECONDS")
    ap.add_argument("--no-install", action="store_true", help="do not install anything; use this Python")
    ap.add_argument("--run-dir", help="keep configs, logs and data here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--ports", type=int, metavar="BASE",
                    help=f"use ports BASE, BASE+1, ... for the {', '.join(PORTS)} (default: "
                         f"{', '.join(map(str, PORTS.values()))}); a busy one is replaced by a free one")
    args = ap.parse_args(argv)
    try:
        if not args.no_install:
            venv_python = install()
            argv = list(sys.argv[1:] if argv is None else argv)
            os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *argv, "--no-install"])
        return run(args)
    except StackError as e:
        log(f"error: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        log(f"error: {' '.join(map(str, e.cmd))} failed with exit {e.returncode}")
        return 1
    except KeyboardInterrupt:  # during the installation, before run() takes over the signals
        log("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
