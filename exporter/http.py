"""The HTTP server: hands out the cached exposition; never calls a backend or an API.

Routes: the telemetry path (text format or OpenMetrics by Accept, gzip by Accept-Encoding), /healthz, a landing page
at /, and POST /api/v1/checkpoint for training jobs (loopback peers, or any peer once basic auth is on).
"""

from __future__ import annotations

import base64
import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.exposition import Exposition
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

# the classic text format that every Prometheus since 2.0 reads; OpenMetrics when the scraper asks for it
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class Site:
    """What the handler may touch: callables that read cached state, nothing that does I/O."""

    telemetry_path: str
    exposition: Callable[[], Exposition]
    healthy: Callable[[], bool]
    landing: Callable[[], dict[str, str]]
    record_checkpoint: Callable[[float, str], None] | None = None
    web: WebConfig | None = None


class Handler(BaseHTTPRequestHandler):
    server_version = "gaudi-exporter"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, without a 40 ms delayed-ACK stall
    site: Site  # set on the subclass made by serve()

    def log_message(self, fmt: str, *args: object) -> None:  # access logs only at debug level
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorised(self) -> bool:
        web = self.site.web
        if web is None or not web.users:
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if web.check(user, password):
                return True
        self._send(401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gaudi-exporter"'})
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        site = self.site
        if path != "/healthz" and not self._authorised():  # liveness probes carry no credentials; it tells nothing
            return
        if path == site.telemetry_path:
            exp = site.exposition()
            om = "application/openmetrics-text" in self.headers.get("Accept", "")
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            body = (exp.openmetrics_gz if gz else exp.openmetrics) if om else (exp.text_gz if gz else exp.text)
            self._send(200, body, CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT,
                       {"Content-Encoding": "gzip"} if gz else None)
        elif path == "/healthz":
            if site.healthy():
                self._send(200, b"ok\n")
            else:
                self._send(503, b"collection loop stalled or not started\n")
        elif path == "/":
            info = site.landing()
            rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info.items())
            body = (
                "<!doctype html><html><head><title>gaudi-exporter</title></head><body>"
                "<h1>gaudi-exporter</h1><p>Prometheus exporter for Intel Gaudi nodes: telemetry and live cost.</p>"
                f"<table>{rows}</table><ul><li><a href=\"{html.escape(site.telemetry_path)}\">Metrics</a></li>"
                "<li><a href=\"/healthz\">Health</a></li></ul></body></html>"
            ).encode()
            self._send(200, body, "text/html; charset=utf-8")
        else:
            self._send(404, b"not found; try " + site.telemetry_path.encode() + b"\n")

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path != "/api/v1/checkpoint" or self.site.record_checkpoint is None:
            self._send(404, b"not found\n")
            return
        web = self.site.web
        auth_on = web is not None and bool(web.users)
        if not auth_on and not _is_loopback(self.client_address[0]):
            self._send(403, b"checkpoint reports are accepted from loopback only unless basic auth is on\n")
            return
        if not self._authorised():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            self._send(413, b"body too large\n")
            return
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            ts = float(body.get("timestamp", time.time()))
            if not (0 < ts < time.time() + 300):
                raise ValueError("timestamp must be a unix time, not in the future")
            job = str(body.get("job", ""))
        except (ValueError, TypeError) as e:
            self._send(400, f"bad checkpoint report: {e}; send {{\"timestamp\": <unix time>, \"job\": \"name\"}}\n"
                       .encode())
            return
        try:
            self.site.record_checkpoint(ts, job)
        except ValueError as e:
            self._send(400, f"bad checkpoint report: {e}\n".encode())
            return
        self._send(204, b"")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_listen_address(addr: str) -> tuple[str, int, int]:
    """':9654' -> all interfaces; '127.0.0.1:9654'; '[::1]:9654'. Returns (host, port, address family)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {addr!r}: expected [host]:port, e.g. :9654 or 127.0.0.1:9654")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host or "0.0.0.0", int(port), family


def serve(address: str, site: Site) -> tuple[ThreadingHTTPServer, threading.Thread]:
    host, port, family = parse_listen_address(address)
    handler = type("BoundHandler", (Handler,), {"site": site})
    server_cls = type("Server", (_Server,), {"address_family": family})
    server = server_cls((host, port), handler)
    if site.web is not None and site.web.ssl_context is not None:
        server.socket = site.web.ssl_context.wrap_socket(server.socket, server_side=True,
                                                         do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http",
                              daemon=True)
    thread.start()
    return server, thread
