"""The HTTP server: hands out the cached exposition; never calls a backend or an API.

Routes: the telemetry path (text format or OpenMetrics by Accept, gzip by Accept-Encoding), /healthz, a landing page
at /, and POST /api/v1/checkpoint for training jobs (loopback peers, or any peer once basic auth is on).

One event-loop thread serves every connection, so idle and slow clients cost a few KiB each, not a thread: the
listen backlog is deep, the request head is capped in bytes and in time before any auth, idle keep-alive
connections time out (the longest idle goes first when the connection cap is hit), any error response with an
unread body closes the connection, and every bad request is answered where possible, counted in
``gaudi_exporter_http_bad_requests_total{reason}`` and logged in one line. bcrypt runs in one worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import html
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from exporter.exposition import Exposition
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

# the classic text format that every Prometheus since 2.0 reads; OpenMetrics when the scraper asks for it
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CHECKPOINT_PATH = "/api/v1/checkpoint"
RESERVED_PATHS = ("/", "/healthz", CHECKPOINT_PATH)
# a reported checkpoint may be this far ahead of the exporter's clock (same node, same clock: only rounding and
# the time between taking the timestamp and posting it); further ahead is refused, not clamped
CHECKPOINT_MAX_SKEW_SECONDS = 5.0
# what Go's net/http (so every exporter-toolkit exporter) answers to plain HTTP on a TLS port
PLAIN_HTTP_TO_TLS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
MAX_AUTH_QUEUE = 16  # credentials waiting for bcrypt; more answer 429 (cached verdicts never wait)

# reasons of gaudi_exporter_http_bad_requests_total: a fixed set, so hostile input cannot add series
REASONS = ("malformed", "uri_too_long", "headers_too_large", "bad_content_length", "chunked_body",
           "body_too_large", "bad_checkpoint", "timeout", "client_disconnect", "tls_handshake",
           "plain_http_to_tls", "client_cert_refused", "unauthorized", "rate_limited", "method_not_allowed",
           "too_many_connections", "internal_error")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
_DIGITS = re.compile(rb"^[0-9]{1,18}$")


def check_telemetry_path(path: str) -> str:
    """The telemetry path must be a plain path that no other endpoint uses (else it would bypass their rules)."""
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?# \t\r\n"):
        raise ValueError(f"web.telemetry_path must be a path starting with '/' (no query, no spaces), got {path!r}")
    if path in RESERVED_PATHS:
        raise ValueError(f"web.telemetry_path {path!r} collides with the exporter's own endpoint {path}; pick "
                         f"another path (endpoints: {', '.join(RESERVED_PATHS)})")
    return path


@dataclass
class Site:
    """What the handler may touch: callables that read cached state, nothing that does I/O."""

    telemetry_path: str
    exposition: Callable[[], Exposition]
    healthy: Callable[[], bool]
    landing: Callable[[], dict[str, str]]
    record_checkpoint: Callable[[float, str], None] | None = None
    web: WebConfig | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        check_telemetry_path(self.telemetry_path)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may hold; defaults suit Prometheus (sub-KiB heads, scrapes every 5-60 s)."""

    backlog: int = 1024
    head_bytes: int = 16 * 1024  # request line and headers together
    request_line_bytes: int = 8 * 1024
    max_headers: int = 100
    body_bytes: int = 64 * 1024
    head_timeout: float = 10.0  # from the first byte of a request (or the connection) to the end of its head
    idle_timeout: float = 75.0  # a keep-alive connection waiting for its next request
    body_timeout: float = 10.0
    write_timeout: float = 30.0
    handshake_timeout: float = 10.0
    max_connections: int = 10_000  # beyond this the longest-idle connection is closed to admit the new one


class BadRequests:
    """Counts of refused requests by reason; a client_python collector, rendered with the rest each tick."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(REASONS, 0)
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def add(self, reason: str, peer: str, detail: str, *, quiet: bool = False) -> None:
        """Count, and log one line: at info the first time a reason is seen in a minute, then at debug."""
        with self._lock:
            self._counts[reason] += 1
            now = time.monotonic()
            loud = not quiet and now - self._logged.get(reason, -1e9) >= 60
            if loud:
                self._logged[reason] = now
        log.log(logging.INFO if loud else logging.DEBUG, "http %s from %s: %s", reason, peer, detail)

    def get(self, reason: str) -> int:
        with self._lock:
            return self._counts[reason]

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily

        from exporter import catalogue

        m = catalogue.get("gaudi_exporter_http_bad_requests_total")
        f = CounterMetricFamily(m.name, m.help, labels=m.labels)
        with self._lock:
            for reason, n in self._counts.items():
                f.add_metric([reason], n)
        yield f


class CheckpointBodyError(ValueError):
    """A checkpoint report the exporter refuses; the message says what to send."""


def _no_constants(name: str) -> float:
    raise CheckpointBodyError(f"{name} is not a number")


def parse_checkpoint(raw: bytes, now: float, skew: float = CHECKPOINT_MAX_SKEW_SECONDS) -> tuple[float, str]:
    """The body of POST /api/v1/checkpoint -> (timestamp, job). An empty body means "now"."""
    if not raw.strip():
        return now, ""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as e:
        raise CheckpointBodyError(f"not UTF-8 (byte {e.start})") from None
    except RecursionError:
        raise CheckpointBodyError("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and Python's limit on the digits of an integer
        raise CheckpointBodyError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise CheckpointBodyError(f"expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"timestamp", "job"})
    if unknown:
        raise CheckpointBodyError(f"unknown field {unknown[0]!r}")
    ts = body.get("timestamp", now)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise CheckpointBodyError(f"timestamp must be a number (unix seconds), got {json.dumps(ts)[:40]}")
    try:
        ts = float(ts)
    except OverflowError:
        raise CheckpointBodyError("timestamp is out of range") from None
    if not math.isfinite(ts) or ts <= 0:
        raise CheckpointBodyError(f"timestamp must be a positive unix time, got {ts!r}")
    if ts > now + skew:
        raise CheckpointBodyError(f"timestamp {ts:.3f} is {ts - now:.0f}s in the future (the exporter allows "
                                  f"{skew:g}s of clock skew)")
    job = body.get("job", "")
    if not isinstance(job, str) or len(job) > 256:
        raise CheckpointBodyError("job must be a string of at most 256 characters")
    return ts, job


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    peer: str
    body_pending: bool = False  # the client sent a body the server has not read

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


@dataclass
class Response:
    status: int
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


_PHRASES = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
            413: "Content Too Large", 414: "URI Too Long", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class _Refused(Exception):
    """A request answered with an error: (reason for the metric, response)."""

    def __init__(self, reason: str, response: Response, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason, self.response = reason, response


def _error(status: int, text: str, reason: str, close: bool = True) -> _Refused:
    return _Refused(reason, Response(status, text.encode() + b"\n", close=close), text)


def parse_head(head: bytes, peer: str, limits: Limits) -> Request:
    """The request line and headers (CRLF-separated, without the blank line). _Refused on anything malformed."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > limits.request_line_bytes:
        raise _error(414, "request line too long", "uri_too_long")
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] or not _VERSION.match(parts[2]):
        if len(parts) == 3 and parts[2].startswith(b"HTTP/") and _TOKEN.match(parts[0]):
            raise _error(505, "only HTTP/1.0 and HTTP/1.1 are served", "malformed")
        raise _error(400, "malformed request line", "malformed")
    if len(lines) - 1 > limits.max_headers:
        raise _error(431, f"more than {limits.max_headers} header lines", "headers_too_large")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep or not _TOKEN.match(name):  # also refuses obsolete line folding (a leading space)
            raise _error(400, "malformed header line", "malformed")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if any(c in text for c in "\0\r\n"):
            raise _error(400, "malformed header value", "malformed")
        if key in headers:
            if key in ("content-length", "host", "authorization", "transfer-encoding"):
                raise _error(400, f"repeated header {name.decode('ascii')}", "malformed")
            headers[key] += ", " + text
        else:
            headers[key] = text
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _error(400, "non-ASCII request target", "malformed") from None
    if not target.startswith("/"):
        if target.startswith(("http://", "https://")):  # absolute form: keep the path
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        else:
            raise _error(400, "request target must be a path", "malformed")
    return Request(parts[0].decode("ascii"), target, parts[2].decode("ascii"), headers, peer)


def body_length(req: Request, limits: Limits) -> int:
    """Content-Length, validated; chunked and other transfer codings are refused (and close the connection)."""
    if "transfer-encoding" in req.headers:
        raise _error(411, "send the body with a Content-Length; chunked (transfer-encoded) bodies are not accepted",
                     "chunked_body")
    raw = req.headers.get("content-length")
    if raw is None:
        return 0
    if not _DIGITS.match(raw.encode("latin-1")):
        raise _error(400, f"invalid Content-Length {raw[:40]!r}", "bad_content_length")
    n = int(raw)
    if n > limits.body_bytes:
        raise _error(413, f"body too large (limit {limits.body_bytes} bytes)", "body_too_large")
    return n


class _TokenBucket:
    """exporter-toolkit's rate_limit: one request per interval, bursts up to burst."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.interval)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def transport_paused(writer: asyncio.StreamWriter) -> bool:
    """Whether the response is still queued beyond the socket buffer (a slow reader): only then wait for it."""
    transport = writer.transport
    return transport.is_closing() or transport.get_write_buffer_size() > 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def _san_values(cert: dict) -> set[str]:
    return {value for _kind, value in cert.get("subjectAltName", ())}


class Server:
    """The listening socket and the event loop serving it, in one daemon thread."""

    def __init__(self, sock: socket.socket, site: Site, limits: Limits, bad: BadRequests | None = None) -> None:
        self.socket, self.site, self.limits = sock, site, limits
        self.bad = bad or BadRequests()
        self.server_address = sock.getsockname()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._bcrypt = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
        self._auth_waiting = 0
        self._idle: OrderedDict[asyncio.Task, None] = OrderedDict()  # connections waiting for a request
        self._open = 0
        self._tasks: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        self._bucket: _TokenBucket | None = None
        self._bucket_for: object = None
        self._seen_mtimes: tuple[float, ...] | None = None
        self._rotation_checked = -1e9
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    # --- lifecycle
    def start(self) -> threading.Thread:
        self.thread.start()
        return self.thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._accept_task = self._loop.create_task(self._accept())
        try:
            self._loop.run_until_complete(self._stop.wait())
        finally:
            self._accept_task.cancel()
            tasks = [self._accept_task, *self._tasks]
            for t in tasks:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def shutdown(self) -> None:
        """Stop serving (like socketserver's shutdown): open connections are closed."""
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(5)
        self._bcrypt.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self.socket.close()

    def reload_web(self) -> bool:
        """Re-read the web config (SIGHUP, or its TLS files changed); a bad new file keeps the old one serving."""
        from exporter.webconfig import WebConfigError, load, mtimes

        web = self.site.web
        if web is None or web.path is None:
            return False
        try:
            new = load(web.path)
        except WebConfigError as e:
            log.error("web config not reloaded, still serving the previous one: %s", e)
            self._seen_mtimes = mtimes(web.tls.files) if web.tls else ()
            return False
        self.site.web = new
        self._seen_mtimes = mtimes(new.tls.files) if new.tls else ()
        log.info("web config %s reloaded (TLS %s, %d basic-auth users)", web.path, "on" if new.tls else "off",
                 len(new.users))
        return True

    def _check_rotation(self) -> None:
        """Certificates rotated in place (cert-manager, a Secret update) are used from the next connection on."""
        from exporter.webconfig import mtimes

        web = self.site.web
        now = time.monotonic()
        if web is None or web.tls is None or now - self._rotation_checked < 1.0:
            return
        self._rotation_checked = now
        seen = mtimes(web.tls.files)
        if self._seen_mtimes is None:
            self._seen_mtimes = seen
        elif seen != self._seen_mtimes:
            log.info("TLS files of the web config changed: reloading")
            self.reload_web()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # asyncio reports transport errors (a reset during a TLS write, a handshake cut short) here; one line, no
        # traceback: they are the client's doing, and --log.format json must stay JSON
        exc = context.get("exception")
        log.debug("http: %s%s", context.get("message", "error"), f": {type(exc).__name__}: {exc}" if exc else "")

    # --- connections
    async def _accept(self) -> None:
        loop = self._loop
        self.socket.setblocking(False)
        while True:
            try:
                conn, addr = await loop.sock_accept(self.socket)
            except asyncio.CancelledError:
                raise
            except OSError as e:  # out of file descriptors, mostly: keep serving the connections we have
                log.warning("http: accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            if self._open >= self.limits.max_connections:
                if self._idle:
                    oldest, _ = self._idle.popitem(last=False)
                    oldest.cancel()
                else:
                    self.bad.add("too_many_connections", addr[0], f"{self._open} connections open")
                    conn.close()
                    continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stall
            task = loop.create_task(self._connection(conn, addr[0]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_readable(self, sock: socket.socket, timeout: float) -> bool:
        fut = self._loop.create_future()
        self._loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(True))
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            self._loop.remove_reader(sock.fileno())

    async def _answer_plain(self, sock: socket.socket) -> None:
        """Go's answer to plain HTTP on a TLS port; the request is read away first so closing sends no reset."""
        with contextlib.suppress(OSError):
            sock.send(PLAIN_HTTP_TO_TLS)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            drained = 0
            while drained < self.limits.head_bytes and await self._wait_readable(sock, deadline - time.monotonic()):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)

    async def _connection(self, sock: socket.socket, peer: str) -> None:
        self._open += 1
        key = asyncio.current_task()
        transport = None
        try:
            self._check_rotation()
            web = self.site.web
            tls = web.tls if web is not None else None
            if tls is not None:
                self._idle[key] = None
                readable = await self._wait_readable(sock, self.limits.handshake_timeout)
                self._idle.pop(key, None)
                if not readable:
                    self.bad.add("timeout", peer, "no TLS handshake", quiet=True)
                    return
                try:
                    first = sock.recv(5, socket.MSG_PEEK)
                except OSError:
                    return
                if not first:
                    return
                if first[0] != 0x16:  # not a TLS handshake record: plain HTTP (or junk) on the TLS port
                    self.bad.add("plain_http_to_tls", peer, "plain HTTP request on the HTTPS port")
                    if first[:1].isalpha():
                        await self._answer_plain(sock)
                    return
            reader = asyncio.StreamReader(limit=self.limits.head_bytes, loop=self._loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
            try:
                transport, _ = await self._loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=tls.context if tls else None,
                    ssl_handshake_timeout=self.limits.handshake_timeout if tls else None)
            except (OSError, ssl.SSLError, TimeoutError) as e:
                self.bad.add("tls_handshake", peer, f"TLS handshake failed: {type(e).__name__}: {e}", quiet=True)
                return
            if tls is not None and tls.allowed_sans:
                cert = transport.get_extra_info("peercert") or {}
                if not _san_values(cert) & set(tls.allowed_sans):
                    self.bad.add("client_cert_refused", peer, "client certificate has none of the allowed SANs")
                    return
            writer = asyncio.StreamWriter(transport, protocol, reader, self._loop)
            await self._requests(reader, writer, transport, peer, key)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.bad.add("client_disconnect", peer, "connection closed mid-request", quiet=True)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001 - one line, never a traceback per request; the server goes on
            self.bad.add("internal_error", peer, f"{type(e).__name__}: {e}")
        finally:
            self._idle.pop(key, None)
            self._open -= 1
            if transport is not None:
                transport.close()
            else:
                sock.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        transport: asyncio.Transport, peer: str, key: asyncio.Task) -> None:
        limits = self.limits
        first = True
        while True:
            # wait for the next request's first byte: idle keep-alive connections are parked, cheaply
            self._idle[key] = None
            try:
                async with asyncio.timeout(limits.head_timeout if first else limits.idle_timeout):
                    start = await reader.read(1)
            except TimeoutError:
                if first:
                    self.bad.add("timeout", peer, "no request sent", quiet=True)
                return
            finally:
                self._idle.pop(key, None)
            first = False
            if not start:
                return  # the client closed between requests: normal
            try:
                try:
                    async with asyncio.timeout(limits.head_timeout):
                        rest = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    buffered = start + await reader.read(limits.head_bytes)
                    if b"\r\n" not in buffered[:limits.request_line_bytes]:
                        raise _error(414, "request line too long", "uri_too_long") from None
                    raise _error(431, f"request head over {limits.head_bytes} bytes", "headers_too_large") from None
                except TimeoutError:
                    raise _error(408, f"request head not complete within {limits.head_timeout:g}s",
                                 "timeout") from None
                head = (start + rest)[:-4].lstrip(b"\r\n")
                req = parse_head(head, peer, limits)
                length = body_length(req, limits)
                req.body_pending = length > 0
                try:
                    resp = await self._route(req, reader, writer, length)
                except (_Refused, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug in a route answers 500 in one log line
                    raise _Refused("internal_error", Response(500, b"internal error\n", close=True),
                                   f"{type(e).__name__}: {e}") from None
            except _Refused as r:
                self.bad.add(r.reason, peer, str(r), quiet=r.reason == "timeout")
                if await self._write(writer, r.response, None):
                    await self._linger(reader, writer)
                return
            if req.body_pending:
                resp.close = True  # the unread body must not be parsed as the next request
            keep = req.keep_alive() and not resp.close
            if not keep:
                resp.headers["Connection"] = "close"
            elif req.version == "HTTP/1.0":
                resp.headers["Connection"] = "keep-alive"
            log.debug("http %s %s %s -> %d", peer, req.method, req.target[:200], resp.status)
            if not await self._write(writer, resp, req):
                return
            if not keep:
                if req.body_pending:
                    await self._linger(reader, writer)
                return

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close after an error without a reset: stop writing, read away what the client still sends (briefly),
        so the client reads our answer instead of losing it to a TCP RST (Go's server does the same)."""
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if writer.can_write_eof():
                writer.write_eof()
        drained = 0
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            async with asyncio.timeout(1.0):
                while drained < 4 * self.limits.body_bytes:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    drained += len(chunk)

    async def _write(self, writer: asyncio.StreamWriter, resp: Response, req: Request | None) -> bool:
        web = self.site.web
        head = [f"HTTP/1.1 {resp.status} {_PHRASES.get(resp.status, 'Unknown')}",
                f"Content-Type: {resp.ctype}", f"Content-Length: {len(resp.body)}",
                "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())]
        if req is None:
            head.append("Connection: close")
        headers = {**(web.headers if web else {}), **resp.headers}
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if req is None or req.method != "HEAD":
            data += resp.body
        writer.write(data)
        try:
            if transport_paused(writer):
                async with asyncio.timeout(self.limits.write_timeout):
                    await writer.drain()
        except TimeoutError:
            self.bad.add("timeout", req.peer if req else "?", "client did not read the response", quiet=True)
            return False
        return True

    # --- auth
    async def _authorised(self, req: Request) -> Response | None:
        """None when the request may proceed, else the 401/429 to send."""
        web = self.site.web
        if web is None:
            return None
        if web.rate_limit is not None:
            if self._bucket_for is not web:
                self._bucket, self._bucket_for = _TokenBucket(*web.rate_limit), web
            if not self._bucket.allow():
                self.bad.add("rate_limited", req.peer, "over rate_limit", quiet=True)
                return Response(429, b"Too Many Requests\n")
        if not web.users:
            return None
        ok = False
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user_b, _, password = base64.b64decode(token.strip(), validate=True).partition(b":")
                user = user_b.decode("utf-8")
            except (binascii.Error, ValueError):
                user, password = None, b""
            if user is not None:
                verdict = web.cached(user, password)
                if verdict is None:
                    if self._auth_waiting >= MAX_AUTH_QUEUE:
                        self.bad.add("rate_limited", req.peer, "too many password checks waiting", quiet=True)
                        return Response(429, b"Too many password checks; retry\n", headers={"Retry-After": "1"})
                    self._auth_waiting += 1
                    try:
                        verdict = await self._loop.run_in_executor(self._bcrypt, web.check, user, password)
                    finally:
                        self._auth_waiting -= 1
                ok = verdict
        if ok:
            return None
        self.bad.add("unauthorized", req.peer, "missing or wrong credentials", quiet=True)
        return Response(401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gaudi-exporter"'})

    # --- routes
    async def _route(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     length: int) -> Response:
        site, path = self.site, req.path
        if req.method in ("GET", "HEAD"):
            if path == "/healthz":  # liveness probes carry no credentials; it tells nothing
                if site.healthy():
                    return Response(200, b"ok\n")
                return Response(503, b"collection loop stalled or not started\n")
            denied = await self._authorised(req)
            if denied is not None:
                return denied
            if path == site.telemetry_path:
                exp = site.exposition()
                om = "application/openmetrics-text" in req.headers.get("accept", "")
                gz = "gzip" in req.headers.get("accept-encoding", "")
                body = (exp.openmetrics_gz if gz else exp.openmetrics) if om else (exp.text_gz if gz else exp.text)
                return Response(200, body, CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT,
                                {"Content-Encoding": "gzip"} if gz else {})
            if path == "/":
                return Response(200, self._landing(), "text/html; charset=utf-8")
            return Response(404, b"not found; try " + site.telemetry_path.encode() + b"\n")
        if req.method == "POST" and path == CHECKPOINT_PATH and site.record_checkpoint is not None:
            return await self._checkpoint(req, reader, writer, length)
        if req.method == "POST":
            return Response(404, b"not found\n")
        self.bad.add("method_not_allowed", req.peer, f"method {req.method[:20]}", quiet=True)
        return Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD, POST"})

    def _landing(self) -> bytes:
        site = self.site
        info = site.landing()
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in info.items())
        return (
            "<!doctype html><html><head><title>gaudi-exporter</title></head><body>"
            "<h1>gaudi-exporter</h1><p>Prometheus exporter for Intel Gaudi nodes: telemetry and live cost.</p>"
            f"<table>{rows}</table><ul><li><a href=\"{html.escape(site.telemetry_path)}\">Metrics</a></li>"
            "<li><a href=\"/healthz\">Health</a></li></ul></body></html>"
        ).encode()

    async def _checkpoint(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          length: int) -> Response:
        web = self.site.web
        auth_on = web is not None and bool(web.users)
        if not auth_on and not _is_loopback(req.peer):
            return Response(403, b"checkpoint reports are accepted from loopback only unless basic auth is on\n")
        denied = await self._authorised(req)  # with basic auth on, loopback peers must authenticate too
        if denied is not None:
            return denied
        if length and req.headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            raw = b""
            if length:
                async with asyncio.timeout(self.limits.body_timeout):
                    raw = await reader.readexactly(length)
        except TimeoutError:
            raise _error(408, f"body not complete within {self.limits.body_timeout:g}s", "timeout") from None
        req.body_pending = False
        try:
            ts, job = parse_checkpoint(raw, self.site.clock())
            self.site.record_checkpoint(ts, job)
        except ValueError as e:
            self.bad.add("bad_checkpoint", req.peer, str(e), quiet=True)
            return Response(400, f"bad checkpoint report: {e}; send {{\"timestamp\": <unix time>, \"job\": "
                                 "\"name\"}\n".encode())
        return Response(204)


def parse_listen_address(addr: str) -> tuple[str, int, int]:
    """':9654' -> all interfaces; '127.0.0.1:9654'; '[::1]:9654'. Returns (host, port, address family)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {addr!r}: expected [host]:port, e.g. :9654 or 127.0.0.1:9654")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host or "0.0.0.0", int(port), family


def raise_fd_limit() -> None:
    """Raise the soft open-files limit to the hard one (as Go programs do), so idle clients cannot exhaust it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def serve(address: str, site: Site, limits: Limits | None = None,
          bad: BadRequests | None = None) -> tuple[Server, threading.Thread]:
    limits = limits or Limits()
    host, port, family = parse_listen_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(limits.backlog)  # the stdlib's 5 overflowed under 50 connecting clients
    except OSError:
        sock.close()
        raise
    server = Server(sock, site, limits, bad)
    return server, server.start()
