"""Signals the daemon acts on. Its own module so the daemon need not import the CLI that starts it.

SIGTERM, SIGINT and SIGQUIT stop it (each logged); SIGHUP reloads the web config (new certificates, users) and
keeps running, as exporter-toolkit exporters pick up new certificates without a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("gaudi_exporter")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def install_signal_handlers(stop: threading.Event, reload: Callable[[], None] | None = None) -> None:
    def on_stop(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        if reload is None:
            log.info("received SIGHUP: nothing to reload (no --web.config.file), still running")
            return
        log.info("received SIGHUP, reloading the web config")
        # not in the handler itself: it runs between two bytecodes of the main thread, which may hold a lock
        threading.Thread(target=reload, name="reload", daemon=True).start()

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
