"""Signals the daemon stops on. Its own module so the daemon need not import the CLI that starts it."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("gaudi_exporter")


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
