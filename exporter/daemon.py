"""Wires settings into collectors, the loop and the HTTP server, and runs until SIGTERM/SIGINT/SIGQUIT."""

from __future__ import annotations

import logging
import threading
import time

from exporter import __version__, backends, preflight
from exporter.accounting import Accountant
from exporter.backends.base import BackendUnavailable
from exporter.config import ConfigError, Settings, node_name
from exporter.exposition import Renderer
from exporter.http import BadRequests, Site, parse_listen_address, raise_fd_limit, serve
from exporter.known_devices import KnownDevices
from exporter.loop import Loop
from exporter.signals import install_signal_handlers

log = logging.getLogger("gaudi_exporter")


# How long start-up waits for the first price or market refresh (bounded: a slow API must not delay /metrics long).
STARTUP_WAIT_SECONDS = 10.0


class StartupError(Exception):
    """Cannot start: the message says what to change."""


def _identity(settings: Settings) -> tuple[object, object | None]:
    """This node's instance type, zone and lifecycle: IMDS on EC2, else the node.* settings.

    A simulated node is not an EC2 node: it never asks the metadata service.
    """
    from exporter.aws.imds import Imds, resolve_identity

    if settings["backend"] == "simulated":
        log.info("simulated backend: node identity from config, instance metadata not used")
        return resolve_identity(None, settings.section("node")), None
    imds = Imds()
    return resolve_identity(imds, settings.section("node")), imds


def build_node(settings: Settings, stop: threading.Event) -> tuple[Loop, object, list]:
    """The node agent: devices, host, attribution, price, spot notices, checkpoints."""
    try:
        backend = backends.create(
            settings["backend"], hlsmi_path=settings["hlsmi.path"], hlsmi_timeout=settings["hlsmi.timeout"],
            simulated_devices=settings["simulated.devices"], simulated_profile=settings["simulated.profile"],
            simulated_seed=settings["simulated.seed"], simulated_model=settings["simulated.model"],
            interval=settings["interval"])
    except (BackendUnavailable, ValueError) as e:
        raise StartupError(str(e)) from e
    on = {name: settings[f"collectors.{name}"] for name in
          ("hpu", "host", "pricing", "spot", "checkpoint", "kubernetes", "hpc")}
    collectors: list = []
    attribution: tuple[str, ...] = ()
    tracker = None
    if on["hpu"]:
        from exporter.collectors.hpu import HpuCollector

        collectors.append(HpuCollector(backend, settings["slow_interval"]))
    if on["host"]:
        from exporter.collectors.host import HostCollector

        collectors.append(HostCollector())
    if on["kubernetes"]:
        from exporter.collectors.kubernetes import KubernetesCollector
        from exporter.kubernetes.client import PodResourcesClient

        k = KubernetesCollector(PodResourcesClient(settings["kubernetes.socket"]),
                                settings["kubernetes.resource_names"])
        collectors.append(k)
        attribution = k.labels
    if on["hpc"]:
        from exporter.collectors.kubernetes import HpcCollector

        h = HpcCollector(settings["hpc.job_dir"])
        collectors.append(h)
        attribution = h.labels
    identity, imds = None, None
    if on["pricing"] or on["spot"]:
        identity, imds = _identity(settings)
    if on["pricing"]:
        from exporter import pricing
        from exporter.collectors.pricing import PricingCollector

        section = settings.section("pricing")
        try:
            source = pricing.create(section, identity)
        except ValueError as e:  # settings that only this node's identity shows wrong
            raise ConfigError(f"pricing: {e}") from e
        pc = PricingCollector(source, identity, electricity_usd_per_kwh=settings["pricing.electricity.usd_per_kwh"],
                              pue=settings["pricing.electricity.pue"])
        pc.start_refresher(stop)
        pc.attempted.wait(STARTUP_WAIT_SECONDS)  # the first scrape should have a price when one is to be had
        collectors.append(pc)
    if on["spot"] and imds is not None and getattr(identity, "lifecycle", "") == "spot":
        from exporter.collectors.spot import SpotCollector

        collectors.append(SpotCollector(imds, settings["spot.poll_seconds"]))
    if on["checkpoint"]:
        from exporter.checkpoint_tracker import CheckpointTracker
        from exporter.collectors.checkpoint import CheckpointCollector

        tracker = CheckpointTracker(settings["checkpoint.path"])
        collectors.append(CheckpointCollector(tracker))
    loop = Loop(collectors, interval=settings["interval"], version=__version__, backend=backend.name,
                accountant=Accountant(efficiency_target=settings["efficiency.target"]),
                attribution_labels=attribution, renderer=Renderer(nic_ports=settings["collectors.hpu.nic_ports"]),
                known_devices=KnownDevices(settings["hpu.lost_grace_seconds"]))
    return loop, tracker, [backend]


def build_market(settings: Settings, stop: threading.Event) -> Loop:
    from exporter.collectors.market import MarketCollector
    from exporter.market.fetch import MarketWatcher

    preflight.check_market(settings)
    try:
        watcher = MarketWatcher(settings["market.regions"], settings["market.instance_types"],
                                settings["market.source"], settings["market.product_description"])
    except (ValueError, OSError) as e:
        raise StartupError(f"market: {e}") from e
    mc = MarketCollector(watcher, settings["market.refresh_seconds"])
    mc.start_refresher(stop)
    mc.attempted.wait(STARTUP_WAIT_SECONDS)  # the first scrape should have prices when they are to be had
    return Loop([mc], interval=settings["interval"], version=__version__, backend="none", mode="market")


def run(settings: Settings) -> int:
    try:
        parse_listen_address(settings["web.listen_address"])
    except ValueError as e:
        raise StartupError(str(e)) from e
    web = preflight.check(settings)  # the settings' own errors (ConfigError, exit 2), as check-config finds them
    stop = threading.Event()
    servers: list = []  # filled below; SIGHUP before the server starts has nothing to reload yet
    install_signal_handlers(stop, (lambda: [s.reload_web() for s in servers]) if web else None)
    closers: list = []
    tracker = None
    if settings["mode"] == "market":
        loop = build_market(settings, stop)
    else:
        loop, tracker, closers = build_node(settings, stop)
    bad = BadRequests()  # gaudi_exporter_http_bad_requests_total, in the exposition from the first tick on
    loop.renderer.registry.register(bad)
    loop.tick()  # the first scrape already has data
    site = Site(
        telemetry_path=settings["web.telemetry_path"],
        exposition=lambda: loop.exposition,
        healthy=loop.healthy,
        landing=lambda: {"version": __version__, "mode": settings["mode"], "backend": loop.backend,
                         "node": node_name(settings), "interval": f"{settings['interval']:g}s"},
        record_checkpoint=(lambda ts, job: tracker.record(ts)) if tracker and settings["web.checkpoint_api"]
        else None,
        web=web,
    )
    raise_fd_limit()
    try:
        server, _ = serve(settings["web.listen_address"], site, bad=bad)
    except OSError as e:
        raise StartupError(f"cannot listen on {settings['web.listen_address']}: {e.strerror}") from e
    servers.append(server)
    scheme = "https" if web and web.ssl_context else "http"
    host, port, _ = parse_listen_address(settings["web.listen_address"])
    log.info("gaudi-exporter %s listening on %s://%s:%d%s (mode %s, backend %s, interval %gs)", __version__,
             scheme, host, port, settings["web.telemetry_path"], settings["mode"], loop.backend,
             settings["interval"])
    loop_thread = loop.start(stop)
    started = time.monotonic()
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    loop_thread.join(timeout=1.0)
    for c in closers:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - closing is best effort on the way out
            log.debug("close failed", exc_info=True)
    log.info("stopped after %.0fs", time.monotonic() - started)
    return 0
