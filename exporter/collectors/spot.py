"""EC2 spot interruption and rebalance notices, polled from instance metadata on spot nodes."""

from __future__ import annotations

import logging

from exporter.loop import PartialFailure

log = logging.getLogger(__name__)


class SpotCollector:
    name = "spot"

    def __init__(self, imds: object, poll_seconds: float = 5.0) -> None:
        self.imds = imds  # exporter.aws.imds.Imds
        self.poll_seconds = poll_seconds
        self._last_at: float | None = None
        self._last: object | None = None
        self._announced: tuple = (False, False)
        self._failure: str | None = None  # the last poll's error, repeated until a poll succeeds

    def collect(self, now: float, partial: dict | None = None) -> object:
        if self._last_at is not None and now - self._last_at < self.poll_seconds:
            if self._failure is not None:  # failed until IMDS answers again: no "recovered" between two polls
                raise PartialFailure(self._failure, None)
            return self._last
        self._last_at = now  # also on failure: a failing IMDS is asked again after poll_seconds, not every tick
        self._last = None
        try:
            notices = self.imds.notices()
        except Exception as e:  # the same message on every tick until a poll succeeds (one log line)
            self._failure = f"spot notices unknown, IMDS poll failed: {type(e).__name__}: {e}"
            raise PartialFailure(self._failure, None) from e
        self._failure = None
        self._last = notices
        state = (notices.interruption_pending, notices.rebalance_recommended)
        if notices.interruption_pending and not self._announced[0]:
            log.critical("SPOT INTERRUPTION NOTICE: EC2 will %s this node at %s. Save a checkpoint now.",
                         notices.action or "interrupt", notices.interruption_time)
        if notices.rebalance_recommended and not self._announced[1]:
            log.warning("SPOT REBALANCE RECOMMENDED: EC2 says this node is at elevated risk of interruption.")
        self._announced = state
        return notices
