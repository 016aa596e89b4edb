"""A local global view: N simulated clusters remote-writing to one VictoriaMetrics, our alerts in vmalert.

    python3 deploy/local/global_stack.py --clusters 2 [--alert-for 1m] [--reference-prometheus]

Each cluster is what one Kubernetes cluster runs, on 127.0.0.1: a simulated Gaudi node exporter (8 HPUs,
backend="simulated"), a market watcher on sample spot prices (source="sample") and a Prometheus that scrapes them,
evaluates the project's recording rules and `remote_write`s everything with its `cluster` external label. The global
side is Debian's VictoriaMetrics (single node) receiving all clusters, `vmalert` evaluating the project's alerts
against it (state and ALERTS series written back to it) and Debian's Alertmanager routing them by
alerts/alertmanager.yaml to a webhook receiver that prints them here. That is the split docs/deploy.md recommends:
recording rules per cluster, alerting (budgets, absence) on the global view.

--reference-prometheus adds a Prometheus that receives the same remote writes (--web.enable-remote-write-receiver):
the same samples in both engines, to compare PromQL's and MetricsQL's answers (tests/test_global_stack.py does).
--cluster-alerts also evaluates the alerts in every cluster's Prometheus (the same rule file, unchanged), sending to
the same Alertmanager. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as demo  # noqa: E402 - the demo's helpers: one way to start, wait for and stop the parts

REPO = demo.REPO
# Built-in price list entries (exporter/pricing/price_list.py) and the simulated model matching each; clusters take
# them in turn, so the first two clusters differ in hardware and cost.
HARDWARE = (("intel-tiber-bm-gnr-gaudi3-smc-2026", "HL-325L", 19.92), ("intel-tiber-gaudi2-8x-2026", "HL-225", 10.40))
BINARIES = ("prometheus", "prometheus-alertmanager", "victoria-metrics", "vmalert")
SCRAPE_INTERVAL = "5s"


def cluster_names(n: int) -> list[str]:
    return [f"cluster-{i + 1}" for i in range(n)]


def split_rule_files(files: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """(recording, alerting) rule files: each group goes where it runs, recording per cluster, alerting globally.

    A group holding both kinds is an error: it could run in neither place without evaluating half of it twice."""
    import yaml

    recording, alerting = [], []
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        groups = yaml.safe_load(f.read_text())["groups"]
        rec = [g for g in groups if all("record" in r for r in g["rules"])]
        alr = [g for g in groups if all("alert" in r for r in g["rules"])]
        mixed = [g["name"] for g in groups if g not in rec and g not in alr]
        if mixed:
            raise demo.StackError(f"{f.name}: groups {mixed} mix recording rules and alerts")
        for kind, chosen, bucket in (("recording", rec, recording), ("alerting", alr, alerting)):
            if chosen:
                path = out / f"{kind}-{f.name}"
                path.write_text(yaml.safe_dump({"groups": chosen}, sort_keys=False))
                bucket.append(path)
    return recording, alerting


def cluster_prometheus_config(cluster: str, targets: dict[str, str], rule_files: list[Path], remote_writes: list[str],
                              alertmanager: str | None) -> dict:
    """One cluster's Prometheus: scrapes its own targets and forwards every sample (recorded ones included), with
    its `cluster` external label, to the global engine(s)."""
    cfg: dict = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "external_labels": {"cluster": cluster}},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [addr]}]} for job, addr in targets.items()],
        "rule_files": [str(p) for p in rule_files],
        "remote_write": [{"url": url, "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms"}}
                         for url in remote_writes],
    }
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return cfg


def victoria_metrics_cmd(run_dir: Path, addr: str, dedup: str | None) -> list[str]:
    cmd = ["victoria-metrics", f"-storageDataPath={run_dir / 'victoria-metrics'}", f"-httpListenAddr={addr}",
           "-retentionPeriod=100y", "-loggerLevel=WARN",
           # by default the newest 30 s are hidden from queries (samples still arriving): alerts would lag by that
           "-search.latencyOffset=0s",
           # the response cache assumes no sample arrives older than 5 m; remote write retries can break that
           "-search.disableCache"]
    if dedup:
        # HA Prometheus pairs (same external labels) send each sample twice: keep one per interval
        cmd.append(f"-dedup.minScrapeInterval={dedup}")
    return cmd


def vmalert_cmd(rule_files: list[Path], vm_url: str, am_url: str, addr: str, interval: str,
                query_step: str = "30s") -> list[str]:
    return ["vmalert", *[f"-rule={p}" for p in rule_files], f"-datasource.url={vm_url}",
            f"-remoteWrite.url={vm_url}", f"-remoteRead.url={vm_url}", f"-notifier.url={am_url}",
            f"-httpListenAddr={addr}", f"-evaluationInterval={interval}", "-remoteWrite.flushInterval=1s",
            # how far back an instant query looks for a series' last sample (default 5m, Prometheus' lookback): a
            # cluster that stops sending stays visible that long. The demo shortens it so that losing a cluster
            # shows within a minute.
            f"-datasource.queryStep={query_step}",
            f"-external.url=http://{addr}", "-loggerLevel=WARN"]


def status(urls: dict[str, str], clusters: list[str], receiver: demo.Receiver) -> str:
    try:
        alerts = demo.get_json(urls["vmalert"] + "/api/v1/alerts")["data"]["alerts"] or []
        per_cluster = demo.get_json(urls["victoria-metrics"] + "/api/v1/query?query=count+by+(cluster)+(up)")
    except (OSError, KeyError, ValueError) as e:
        return f"the global view did not answer: {e}"
    seen = {r["metric"].get("cluster", ""): r["value"][1] for r in per_cluster["data"]["result"]}
    firing = sorted({f"{(a.get('labels') or {}).get('alertname')}@{(a.get('labels') or {}).get('cluster', '-')}"
                     for a in alerts
                     if a.get("state") == "firing"})
    return (f"targets per cluster in VictoriaMetrics: {', '.join(f'{c}={seen.get(c, 0)}' for c in clusters)}; "
            f"vmalert firing: {', '.join(firing) or 'none'}; notifications received: {len(receiver.notifications)}")


def run(args: argparse.Namespace) -> int:
    python = sys.executable
    if missing := [b for b in BINARIES if shutil.which(b) is None]:
        raise demo.StackError(f"{', '.join(missing)} not found (apt-get install prometheus prometheus-alertmanager "
                              "victoria-metrics)")
    clusters = cluster_names(args.clusters)
    prices = [float(p) for p in args.usd_per_hour.split(",")] if args.usd_per_hour else []
    if prices and len(prices) != len(clusters):
        raise demo.StackError(f"--usd-per-hour: {len(prices)} prices for {len(clusters)} clusters")
    stop = threading.Event()
    # as in stack.py: Ctrl-C, SIGTERM, SIGHUP and a closed output (demo.CONSOLE) only set `stop`
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    demo.CONSOLE.on_closed = stop.set
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="gaudi-global-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = demo.Stack(run_dir)
    receiver: demo.Receiver | None = None
    try:
        global_parts = ["victoria-metrics", "vmalert", "alertmanager", "receiver"]
        if args.reference_prometheus:
            global_parts.append("reference")
        names = list(global_parts)
        for c in clusters:
            names += [f"{c}-exporter", f"{c}-market", f"{c}-prometheus"]
        addr = {n: f"127.0.0.1:{demo.pick_port(0)}" for n in names}
        urls = {n: f"http://{a}" for n, a in addr.items()}
        receiver = demo.Receiver(int(addr["receiver"].rsplit(":", 1)[1]))
        threading.Thread(target=receiver.serve_forever, name="receiver", daemon=True).start()

        rule_files = build_rules(python, run_dir, args)
        if stop.is_set():
            raise demo.Interrupted
        recording, alerting = split_rule_files(rule_files, run_dir / "split")
        (run_dir / "alertmanager.yml").write_text(json.dumps(demo.alertmanager_config(urls["receiver"]), indent=1))
        remote_writes = [urls["victoria-metrics"] + "/api/v1/write"]
        if args.reference_prometheus:
            remote_writes.append(urls["reference"] + "/api/v1/write")
        env = {"AWS_EC2_METADATA_DISABLED": "true"}
        ready = {"victoria-metrics": urls["victoria-metrics"] + "/health",
                 "alertmanager": urls["alertmanager"] + "/-/ready"}
        stack.start("alertmanager", ["prometheus-alertmanager", f"--config.file={run_dir / 'alertmanager.yml'}",
                                     f"--storage.path={run_dir / 'alertmanager'}",
                                     f"--web.listen-address={addr['alertmanager']}", "--cluster.listen-address=",
                                     "--log.level=warn"])
        stack.start("victoria-metrics", victoria_metrics_cmd(run_dir, addr["victoria-metrics"], args.dedup))
        if args.reference_prometheus:
            (run_dir / "reference.yml").write_text("global: {}\n")
            stack.start("reference", ["prometheus", f"--config.file={run_dir / 'reference.yml'}",
                                      f"--storage.tsdb.path={run_dir / 'reference'}",
                                      f"--web.listen-address={addr['reference']}", "--web.enable-remote-write-receiver",
                                      "--storage.tsdb.retention.time=100y", "--log.level=warn"])
            ready["reference"] = urls["reference"] + "/-/ready"
        # the global side first: the clusters' first remote writes find it up
        demo.wait_ready(stack, dict(ready), timeout=60, stop=stop)
        for i, c in enumerate(clusters):
            entry, model, list_price = HARDWARE[i % len(HARDWARE)]
            price = ["--pricing.static.usd-per-hour", str(prices[i])] if prices else ["--pricing.static.entry", entry]
            stack.start(f"{c}-exporter", [python, "-m", "exporter", "--web.listen-address", addr[f"{c}-exporter"],
                                          "--backend", "simulated", "--simulated.devices", "8", "--simulated.model",
                                          model, "--simulated.profile", args.profile, "--simulated.seed", str(i + 1),
                                          "--interval", "2", "--pricing.source", "static", *price,
                                          "--node.name", f"{c}-node-1", "--no-collector.spot"], env)
            stack.start(f"{c}-market", [python, "-m", "exporter", "--mode", "market", "--web.listen-address",
                                        addr[f"{c}-market"], "--market.source", str(demo.SAMPLE_MARKET),
                                        "--interval", "5"], env)
            cfg = cluster_prometheus_config(
                c, {demo.EXPORTER_JOB: addr[f"{c}-exporter"], demo.MARKET_JOB: addr[f"{c}-market"]},
                recording + (alerting if args.cluster_alerts else []), remote_writes,
                addr["alertmanager"] if args.cluster_alerts else None)
            (run_dir / f"{c}-prometheus.yml").write_text(json.dumps(cfg, indent=1))
            stack.start(f"{c}-prometheus", ["prometheus", f"--config.file={run_dir / f'{c}-prometheus.yml'}",
                                            f"--storage.tsdb.path={run_dir / c}",
                                            f"--web.listen-address={addr[f'{c}-prometheus']}",
                                            f"--web.external-url={urls[f'{c}-prometheus']}",
                                            "--rules.alert.resend-delay=5s", "--log.level=warn"])
            ready |= {f"{c}-exporter": urls[f"{c}-exporter"] + "/healthz",
                      f"{c}-market": urls[f"{c}-market"] + "/healthz",
                      f"{c}-prometheus": urls[f"{c}-prometheus"] + "/-/ready"}
        stack.start("vmalert", vmalert_cmd(alerting, urls["victoria-metrics"], urls["alertmanager"], addr["vmalert"],
                                           SCRAPE_INTERVAL))
        ready["vmalert"] = urls["vmalert"] + "/-/ready"
        log(f"starting {len(clusters)} clusters, VictoriaMetrics, vmalert and Alertmanager in {run_dir}")
        demo.wait_ready(stack, ready, timeout=90, stop=stop)
        say(f"\ngaudi-exporter global view is up ({len(clusters)} clusters, profile {args.profile}); logs and data "
              f"in {run_dir}")
        for name in global_parts:
            say(f"  URL {name:<20} {urls[name]}")
        for i, c in enumerate(clusters):
            entry, model, list_price = HARDWARE[i % len(HARDWARE)]
            price = f"{prices[i]:g} USD/h (--usd-per-hour)" if prices else f"{list_price} USD/h ({entry})"
            say(f"  cluster {c}: 8 simulated {model} HPUs at {price}")
            for part in ("exporter", "market", "prometheus"):
                say(f"  URL {c + '-' + part:<20} {urls[f'{c}-{part}']}")
        say(f"What to look at:\n"
              f"  {urls['victoria-metrics']}/vmui   query all clusters, e.g. sum by (cluster) "
              f"(cluster:gaudi_node_cost_usd_per_hour:rate5m)\n"
              f"  {urls['vmalert']}/vmalert/groups   the project's alerts evaluated globally\n"
              f"Ctrl-C stops everything.")
        log("ready")
        deadline = time.monotonic() + args.duration if args.duration else None
        next_status = time.monotonic() + args.status_every
        while not stop.wait(0.5):
            if dead := stack.dead():
                raise demo.StackError(f"{dead[0]} exited:\n{stack.tail(dead[0])}")
            now = time.monotonic()
            if now >= next_status:
                log(status(urls, clusters, receiver))
                next_status = now + args.status_every
            if deadline and now >= deadline:
                break
        log(status(urls, clusters, receiver))
        return 0
    except (demo.Interrupted, subprocess.CalledProcessError):
        if not stop.is_set():
            raise
        log("interrupted before the stack was up")
        return 130
    finally:
        log("stopping")
        # the senders first, while the global side still takes their last remote writes (a Prometheus whose
        # remote_write target is gone retries until its flush deadline before it exits)
        try:
            stop_parts(stack, [n for n in stack.procs if n.startswith(tuple(clusters)) or n == "vmalert"])
            stack.stop()
        finally:
            if receiver is not None:
                receiver.shutdown()
                receiver.server_close()
            if not args.run_dir and not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        log("stopped")


def stop_parts(stack: demo.Stack, names: list[str], timeout: float = 10) -> None:
    """SIGTERM these parts and wait for them (SIGKILL after ``timeout``); Stack.stop() then skips them."""
    procs = [stack.procs[n] for n in names if stack.procs[n].poll() is None]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_rules(python: str, run_dir: Path, args: argparse.Namespace) -> list[Path]:
    """The project's rules: alerts/build/*.yaml as built, or rebuilt from --thresholds, with every `for` shortened
    (--alert-for) and shorter increments (--increment-step) for a demo that cannot wait for 5-minute steps."""
    if not (args.thresholds or args.alert_for or args.increment_step):
        return demo.build_rules(python, run_dir, None)
    import yaml

    t = yaml.safe_load(Path(args.thresholds or REPO / "alerts" / "thresholds.yaml").read_text())
    if args.alert_for:
        t = demo.shorten_fors(t, args.alert_for)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "thresholds.yaml").write_text(yaml.safe_dump(t, sort_keys=False))
    step = ["--increment-step", args.increment_step] if args.increment_step else []
    subprocess.run([python, "-m", "alerts.build", "--thresholds", str(run_dir / "thresholds.yaml"), "--out",
                    str(run_dir / "rules"), "--prometheusrule", str(run_dir / "prometheusrule.yaml"), *step],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return sorted((run_dir / "rules").glob("*.yaml"))


def say(text: str) -> None:
    """Terminal output through the demo's console: a closed output stops the stack instead of raising."""
    demo.CONSOLE.write(text + "\n")


def log(msg: str) -> None:
    say(f"[global] {msg}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=2, help="simulated clusters (default %(default)s)")
    ap.add_argument("--profile", choices=demo.PROFILES, default="training",
                    help="simulated workload of every node (default %(default)s)")
    ap.add_argument("--usd-per-hour", metavar="P1,P2,...",
                    help="node price of each cluster, USD per hour (default: built-in price list entries, Gaudi 3 "
                         "and Gaudi 2 in turn)")
    ap.add_argument("--thresholds", metavar="FILE", help="build the rules from this thresholds file "
                                                         "(default: alerts/build/*.yaml as built)")
    ap.add_argument("--alert-for", metavar="DURATION",
                    help="rebuild the rules with every alert's `for` shortened to about DURATION (e.g. 1m)")
    ap.add_argument("--increment-step", metavar="DURATION",
                    help="rebuild the rules with the recorded increments every DURATION instead of 5m (at least "
                         f"two scrapes: {SCRAPE_INTERVAL} apart), so that budget alerts have data within a demo")
    ap.add_argument("--cluster-alerts", action="store_true",
                    help="also evaluate the alerts in each cluster's Prometheus (same rules, same Alertmanager)")
    ap.add_argument("--reference-prometheus", action="store_true",
                    help="a Prometheus receiving the same remote writes as VictoriaMetrics, to compare answers")
    ap.add_argument("--dedup", metavar="DURATION",
                    help="VictoriaMetrics -dedup.minScrapeInterval (for HA Prometheus pairs; default off)")
    ap.add_argument("--duration", type=float, default=0, metavar="SECONDS",
                    help="stop after SECONDS (default: run until Ctrl-C)")
    ap.add_argument("--status-every", type=float, default=30, help="print a status line every SECONDS")
    ap.add_argument("--no-install", action="store_true", help="do not install anything; use this Python")
    ap.add_argument("--run-dir", help="keep configs, logs and data here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.clusters < 1:
        ap.error("--clusters must be 1 or more")
    if args.increment_step and demo.duration_seconds(args.increment_step) < 2 * demo.duration_seconds(SCRAPE_INTERVAL):
        ap.error(f"--increment-step must span at least two scrapes ({SCRAPE_INTERVAL} apart): an increase() over one "
                 "sample is empty")
    try:
        if not args.no_install:
            demo.APT_PACKAGES["victoria-metrics"] = "victoria-metrics"  # brings vmalert and vmagent too
            venv_python = demo.install()
            argv = list(sys.argv[1:] if argv is None else argv)
            os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *argv, "--no-install"])
        return run(args)
    except demo.StackError as e:
        log(f"error: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        log(f"error: {' '.join(map(str, e.cmd))} failed with exit {e.returncode}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
