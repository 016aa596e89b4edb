"""IMDSv2 client on the standard library: instance identity and spot interruption / rebalance notices.

Off EC2 the link-local address does not answer, so every call has a short timeout and identity() gives up
after the first failed token request: a node agent on premises must not stall its start-up on IMDS.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from exporter.pricing.base import NodeIdentity

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
LIFECYCLES = ("spot", "on-demand", "")


class ImdsError(Exception):
    """IMDS could not be read (disabled, unreachable, or an unexpected answer)."""


@dataclass(frozen=True)
class SpotNotices:
    interruption_pending: bool = False
    interruption_time: float | None = None  # unix time EC2 will act
    action: str | None = None  # "terminate" | "stop" | "hibernate"
    rebalance_recommended: bool = False
    rebalance_time: float | None = None  # unix time of the recommendation


def _rfc3339(s: object) -> float:
    """An RFC 3339 time as IMDS writes it -> unix time; ValueError for anything else (a number, a year 0)."""
    if not isinstance(s, str):
        raise ValueError(f"expected an RFC 3339 time string, got {s!r}")
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except OverflowError as e:
        raise ValueError(f"time {s!r} out of range") from e


class Imds:
    def __init__(self, endpoint: str | None = None, timeout: float = 1.0, *, token_ttl_seconds: int = 21600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.disabled = os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"
        base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
        self.endpoint = base.rstrip("/")
        self.timeout = timeout
        self.token_ttl = int(token_ttl_seconds)
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()
        # IMDS is link-local: never send it through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- HTTP
    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise ImdsError(f"IMDS at {self.endpoint} unreachable: {getattr(e, 'reason', e)}") from e
        except http.client.HTTPException as e:  # something that is not an HTTP server answered
            raise ImdsError(f"IMDS at {self.endpoint} did not answer HTTP: {e!r}") from e

    def _get_token(self, force: bool = False) -> str:
        with self._lock:
            now = self._clock()
            if not force and self._token and now < self._token_expires:
                return self._token
            status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl)})
            if status != 200 or not body:
                raise ImdsError(f"IMDS token request answered HTTP {status}")
            self._token = body.decode("utf-8", "replace").strip()
            # Renew a minute early so a token never expires between our check and IMDS's.
            self._token_expires = now + max(1.0, self.token_ttl - 60)
            return self._token

    def get(self, path: str) -> str | None:
        """The text at a metadata path; None on 404. On 401 the token is renewed once."""
        if self.disabled:
            raise ImdsError("IMDS disabled by AWS_EC2_METADATA_DISABLED=true")
        for attempt in (0, 1):
            status, body = self._request("GET", path, {TOKEN_HEADER: self._get_token(force=attempt == 1)})
            if status == 200:
                return body.decode("utf-8", "replace")
            if status == 404:
                return None
            if status != 401:
                raise ImdsError(f"IMDS {path} answered HTTP {status}")
        raise ImdsError(f"IMDS {path} refused a fresh token (HTTP 401)")

    # --- what the exporter needs
    def identity(self) -> NodeIdentity | None:
        if self.disabled:
            log.info("imds: disabled by AWS_EC2_METADATA_DISABLED=true")
            return None
        try:
            self._get_token()
            itype = self.get("/latest/meta-data/instance-type") or ""
            zone = self.get("/latest/meta-data/placement/availability-zone") or ""
            region = self.get("/latest/meta-data/placement/region") or ""
            lifecycle = self.get("/latest/meta-data/instance-life-cycle") or ""
        except ImdsError as e:
            log.info("imds: not on EC2 or IMDS not reachable (%s)", e)
            return None
        if not itype:
            log.info("imds: answered but has no instance-type; not using it")
            return None
        if lifecycle not in LIFECYCLES:
            # e.g. "scheduled": billed like on-demand as far as this exporter can tell.
            log.info("imds: instance-life-cycle %r treated as on-demand", lifecycle)
            lifecycle = "on-demand"
        zone = zone.strip()
        region = region.strip() or _zone_region(zone)  # placement/region is missing on old IMDS versions
        return NodeIdentity(itype.strip(), region, zone, lifecycle, "imds")

    def notices(self) -> SpotNotices:
        """The current spot notices; raises ImdsError when IMDS cannot be read (unknown is not 'none')."""
        action = self.get("/latest/meta-data/spot/instance-action")
        rebalance = self.get("/latest/meta-data/events/recommendations/rebalance")
        pending, when, what = False, None, None
        if action:
            try:
                doc = json.loads(action)
                what, when = str(doc["action"]), _rfc3339(doc["time"])
            except (ValueError, KeyError, TypeError, RecursionError) as e:
                raise ImdsError(f"IMDS spot/instance-action is not documented JSON: {action[:200]!r}") from e
            pending = True
        rb, rb_time = False, None
        if rebalance:
            try:
                rb_time = _rfc3339(json.loads(rebalance)["noticeTime"])
            except (ValueError, KeyError, TypeError, RecursionError) as e:
                raise ImdsError(f"IMDS rebalance is not documented JSON: {rebalance[:200]!r}") from e
            rb = True
        return SpotNotices(pending, when, what, rb, rb_time)


def _zone_region(zone: str) -> str:
    """us-east-1a -> us-east-1, us-west-2-lax-1a -> us-west-2."""
    m = re.match(r"^([a-z]{2}(?:-[a-z]+)+-\d+)", zone)
    return m.group(1) if m else ""


def resolve_identity(imds: Imds | None, settings_node: dict) -> NodeIdentity:
    """IMDS when it answers, else the config's node.* keys; logs which, so an operator can tell."""
    ident = imds.identity() if imds is not None else None
    if ident is not None:
        log.info("identity from IMDS: instance_type=%s region=%s zone=%s lifecycle=%s", ident.instance_type,
                 ident.region, ident.zone, ident.lifecycle)
        return ident
    node = settings_node or {}
    vals = {}
    for key in ("instance_type", "region", "zone", "lifecycle"):
        v = node.get(key) or ""
        if not isinstance(v, str):
            raise ValueError(f"node.{key} must be a string, got {v!r}")
        vals[key] = v.strip()
    if vals["lifecycle"] not in LIFECYCLES:
        raise ValueError(f"node.lifecycle must be 'spot' or 'on-demand', got {vals['lifecycle']!r}")
    if vals["zone"] and not vals["region"]:
        vals["region"] = _zone_region(vals["zone"])
    ident = NodeIdentity(vals["instance_type"], vals["region"], vals["zone"], vals["lifecycle"], "config")
    log.info("identity from config (IMDS not used): instance_type=%s region=%s zone=%s lifecycle=%s",
             ident.instance_type or "-", ident.region or "-", ident.zone or "-", ident.lifecycle or "-")
    return ident
