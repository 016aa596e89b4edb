"""A fake EC2 instance metadata service (IMDSv2 only) over real HTTP on 127.0.0.1.

Token semantics as EC2's: PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns
a token and echoes the TTL; a GET without a token, with an unknown one or an expired one gets 401; a PUT with
X-Forwarded-For is refused (403). Notices answer 404 until a test switches them on.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeImds:
    def __init__(self, instance_type: str = "dl1.24xlarge", zone: str = "us-east-1a",
                 region: str = "us-east-1", lifecycle: str = "spot",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the server's own clock, for token expiry; tests may pass an adjustable one
        self.paths: dict[str, str] = {
            "/latest/meta-data/instance-type": instance_type,
            "/latest/meta-data/placement/availability-zone": zone,
            "/latest/meta-data/placement/region": region,
            "/latest/meta-data/instance-life-cycle": lifecycle,
            "/latest/meta-data/instance-id": "i-0123456789abcdef0",
        }
        self.tokens: dict[str, float] = {}  # token -> expiry on self.clock
        self.token_puts = 0
        self.gets: list[tuple[str, int]] = []  # (path, status)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- switches
    def set_instance_action(self, action: str, when: float) -> None:
        doc = {"action": action, "time": rfc3339(when)}
        self.paths["/latest/meta-data/spot/instance-action"] = json.dumps(doc)

    def set_rebalance(self, when: float) -> None:
        doc = {"noticeTime": rfc3339(when)}
        self.paths["/latest/meta-data/events/recommendations/rebalance"] = json.dumps(doc)

    def clear_notices(self) -> None:
        self.paths.pop("/latest/meta-data/spot/instance-action", None)
        self.paths.pop("/latest/meta-data/events/recommendations/rebalance", None)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # --- server
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeImds:
        fake = self

        class Handler(_Handler):
            imds = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _put_token(self, ttl_header: str | None, forwarded: bool) -> tuple[int, str, dict[str, str]]:
        with self._lock:
            self.token_puts += 1
        if forwarded:
            return 403, "Forbidden", {}
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            return 400, "Bad Request", {}
        if not 1 <= ttl <= 21600:
            return 400, "Bad Request", {}
        token = secrets.token_urlsafe(40)
        with self._lock:
            self.tokens[token] = self.clock() + ttl
        return 200, token, {TTL_HEADER: str(ttl)}

    def _get(self, path: str, token: str | None) -> tuple[int, str]:
        with self._lock:
            expiry = self.tokens.get(token or "")
            valid = expiry is not None and self.clock() < expiry
        if not valid:
            status, body = 401, "Unauthorized"
        elif path in self.paths:
            status, body = 200, self.paths[path]
        else:
            status, body = 404, "Not Found"
        with self._lock:
            self.gets.append((path, status))
        return status, body


class _Handler(BaseHTTPRequestHandler):
    imds: FakeImds
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        return None

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length:
            self.rfile.read(length)
        if self.path != "/latest/api/token":
            self._send(405, "Method Not Allowed")
            return
        status, body, headers = self.imds._put_token(self.headers.get(TTL_HEADER),
                                                      "X-Forwarded-For" in self.headers)
        self._send(status, body, headers)

    def do_GET(self) -> None:  # noqa: N802
        status, body = self.imds._get(self.path, self.headers.get(TOKEN_HEADER))
        self._send(status, body)

    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
