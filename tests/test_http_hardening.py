"""The HTTP server under load and hostile input (issue 15: backlog, idle/slow clients, body framing, bad requests,
telemetry path collisions, checkpoint bodies), in process against the real server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from exporter.backends.simulated import SimulatedBackend
from exporter.collectors.hpu import HpuCollector
from exporter.http import Limits, Site, parse_checkpoint, serve
from exporter.loop import Loop
from tests.support.procs import free_port


@pytest.fixture
def loop():
    lp = Loop([HpuCollector(SimulatedBackend(devices=2, seed=1, interval=1.0), 60.0)], interval=1.0,
              version="test", backend="simulated")
    lp.tick()
    return lp


@pytest.fixture
def served(loop):
    """Start a server; yields a function(site kwargs, limits) -> (base URL, port, server, record list)."""
    started = []

    def start(limits: Limits | None = None, **kw):
        got: list[tuple[float, str]] = []
        kw.setdefault("record_checkpoint", lambda ts, job: got.append((ts, job)))
        port = free_port()
        site = Site("/metrics", lambda: loop.exposition, loop.healthy, lambda: {"version": "test"}, **kw)
        args = (f"127.0.0.1:{port}", site) + ((limits,) if limits else ())
        server, _ = serve(*args)
        started.append(server)
        return f"http://127.0.0.1:{port}", port, server, got

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``); returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def test_the_listen_backlog_is_deep_enough_for_50_connecting_clients(served):
    """The stdlib's backlog of 5 overflowed the kernel's listen queue under 50 clients opening connections."""
    _, port, _, _ = served()
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    backlog = int(out.split()[2])  # Send-Q of a listening socket is its backlog
    assert backlog >= 128


def test_idle_and_half_sent_requests_are_bounded_and_timed_out_while_scrapes_go_through(served):
    base, port, server, _ = served(Limits(head_timeout=1.0, idle_timeout=1.0))
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    slow = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60000)  # a header that never ends
        slow.append(s)
    try:
        t0 = time.monotonic()
        r = requests.get(base + "/metrics", timeout=5)
        assert r.status_code == 200 and b"gaudi_hpu_utilization_ratio" in r.content
        assert time.monotonic() - t0 < 2  # not queued behind the idle clients
        assert threading.active_count() - threads_before <= 2  # no thread per connection
        time.sleep(2.5)
        for s in idle + slow:  # the server closed them: EOF (or a 408/431 first for the half-sent ones)
            s.settimeout(2)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            assert data in (b"",) or statuses(data)[0] in (408, 431)
        assert requests.get(base + "/metrics", timeout=5).status_code == 200
    finally:
        for s in idle + slow:
            s.close()


def test_total_header_bytes_are_capped_before_auth(served):
    """99 header lines of 65 KB each were all accepted (20 such clients took RSS over the pod's limit)."""
    _, port, server, _ = served()
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 8000) for i in range(20))
    out = exchange(port, head + b"\r\n")
    assert statuses(out) == [431]
    long_url = exchange(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(long_url) == [414]
    assert server.bad.get("headers_too_large") == 1 and server.bad.get("uri_too_long") == 1


def test_negative_content_length_is_refused_not_read_to_end_of_stream(served):
    _, port, _, got = served()
    out = exchange(port, b"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}")
    assert statuses(out) == [400] and b"Content-Length" in out
    assert got == []


def test_a_chunked_body_is_refused_not_recorded_as_now(served):
    _, port, _, got = served()
    body = json.dumps({"timestamp": 1.7e9}).encode()
    out = exchange(port, b"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert statuses(out) == [411]
    assert got == []


def test_after_a_413_the_unread_body_is_not_run_as_the_next_request(served):
    _, port, _, got = served()
    hidden = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    body = hidden * (70000 // len(hidden) + 1)
    out = exchange(port, b"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
    assert statuses(out) == [413]  # and nothing else: the GETs in the body were never executed
    assert got == []


def test_any_error_with_an_unread_body_closes_the_connection(served):
    _, port, _, _ = served()
    out = exchange(port, b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 38\r\n\r\n"
                   b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(out) == [404]


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_content_length"),
    (b"POST /api/v1/checkpoint HTTP/1.1\r\nConnection: close\r\nContent-Length: 19\r\n\r\n{\"timestamp\":1e400}", 400,
     "bad_checkpoint"),
    (b"POST /api/v1/checkpoint HTTP/1.1\r\nConnection: close\r\nContent-Length: 30000\r\n\r\n" + b"[" * 30000, 400,
     "bad_checkpoint"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, "malformed"),
    (b"GET /metrics HTTP/1.1\r\n bad folding\r\n\r\n", 400, "malformed"),
    (b"BREW /pot HTTP/1.1\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505, "malformed"),
])
def test_bad_requests_get_an_answer_and_are_counted(served, loop, request_bytes, status, reason):
    _, port, server, got = served()
    out = exchange(port, request_bytes)
    assert statuses(out)[:1] == [status]
    assert got == []
    assert server.bad.get(reason) == 1
    loop.renderer.registry.register(server.bad)
    exp = loop.tick().text.decode()
    assert f'gaudi_exporter_http_bad_requests_total{{reason="{reason}"}} 1.0' in exp


def test_a_client_that_disconnects_mid_request_is_counted_and_the_server_goes_on(served):
    base, port, server, _ = served()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"times")
    deadline = time.monotonic() + 5
    while server.bad.get("client_disconnect") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.bad.get("client_disconnect") == 1
    assert requests.get(base + "/metrics", timeout=5).status_code == 200


def test_what_held_still_holds_http10_pipelining_and_keep_alive(served):
    _, port, _, _ = served()
    out = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert statuses(out) == [200] and b"Connection: close" in out
    pipelined = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                         + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(pipelined) == [200, 200, 200, 200]
    with requests.Session() as s:
        ports = set()
        for _ in range(3):
            r = s.get(f"http://127.0.0.1:{port}/metrics", timeout=5, stream=True)
            ports.add(r.raw._connection.sock.getsockname()[1])
            r.content  # noqa: B018 - read the body so the connection goes back to the pool
        assert len(ports) == 1  # one keep-alive connection, as Prometheus scrapes


@pytest.mark.parametrize("path", ["/healthz", "/", "/api/v1/checkpoint"])
def test_a_telemetry_path_that_collides_with_another_endpoint_is_refused(path):
    from exporter.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="collides"):
        resolve({"web.telemetry_path": path}, None, env={})


def test_the_cli_refuses_a_colliding_telemetry_path_with_exit_2():
    from tests.support.procs import REPO

    p = subprocess.run([sys.executable, "-m", "exporter", "--backend", "simulated", "--web.telemetry-path", "/healthz",
                        "--web.listen-address", f"127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "web.telemetry_path" in p.stderr


@pytest.mark.parametrize("body, ok", [
    ({"timestamp": True}, False),  # a boolean is not a time (it was taken as t=1)
    ({"timestamp": "1700000000"}, False),  # a string is not a number
    ({"timestamp": "+300"}, False),
    ({"timestamp": None}, False),
    ({"timestamp": -5}, False),
    ({"timestamp": 1.7e9, "job": {"x": 1}}, False),
    ({"timestamp": 1.7e9, "tiemstamp": 1}, False),  # a typo is named, not ignored
    ({"timestamp": 1.7e9, "job": "llama"}, True),
])
def test_checkpoint_bodies(served, body, ok):
    base, _, _, got = served()
    r = requests.post(base + "/api/v1/checkpoint", json=body, timeout=5)
    assert r.status_code == (204 if ok else 400), r.text
    assert bool(got) == ok


def test_a_checkpoint_in_the_future_is_refused_beyond_the_documented_skew(served):
    from exporter.http import CHECKPOINT_MAX_SKEW_SECONDS

    base, _, _, got = served()
    url = base + "/api/v1/checkpoint"
    assert requests.post(url, json={"timestamp": time.time() + 300}, timeout=5).status_code == 400
    assert requests.post(url, json={"timestamp": time.time() + CHECKPOINT_MAX_SKEW_SECONDS + 30},
                         timeout=5).status_code == 400
    assert got == []
    assert requests.post(url, json={"timestamp": time.time() + 1}, timeout=5).status_code == 204
    assert requests.post(url, data=b"", timeout=5).status_code == 204  # empty body: "saved just now"
    assert len(got) == 2


def test_with_basic_auth_on_loopback_peers_must_authenticate_for_checkpoints_too(served, tmp_path):
    import bcrypt

    from exporter.webconfig import load

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  trainer: '{hashed}'\n")
    base, _, _, got = served(web=load(tmp_path / "web.yml"))
    url = base + "/api/v1/checkpoint"
    assert requests.post(url, json={"timestamp": 1.7e9}, timeout=5).status_code == 401
    assert requests.post(url, json={"timestamp": 1.7e9}, auth=("trainer", "pw"), timeout=5).status_code == 204
    assert got == [(1.7e9, "")]


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["num", "int", "str", "bool", "null", "big", "list", "obj"] if depth < 4 else ["num", "str", "null"]
    k = rng.choice(kinds)
    if k == "num":
        return rng.choice([rng.uniform(-1e10, 4e9), 1.7e9, 0.0, -0.0, 1e308, 5e-324])
    if k == "int":
        return rng.choice([0, 1, -1, 1700000000, 2**63, 10**30])
    if k == "str":
        return rng.choice(["", "now", "1.7e9", "\u0661\u0667", "\ud800", "x" * 300])
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "big":
        return "BIG"
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["timestamp", "job", "x", ""]): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _random_body(rng: random.Random) -> bytes:
    shape = rng.random()
    if shape < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if shape < 0.15:
        return b"[" * rng.randint(1, 50000)
    if shape < 0.2:
        return b'{"timestamp": ' + b"9" * rng.randint(300, 6000) + b"}"
    if shape < 0.25:
        return rng.choice([b'{"timestamp": NaN}', b'{"timestamp": Infinity}', b'{"timestamp": 1e400}',
                           b'{"timestamp": -1e400}'])
    doc = {"timestamp": _random_json(rng)} if rng.random() < 0.7 else _random_json(rng)
    text = json.dumps(doc).replace('"BIG"', "1" + "0" * rng.randint(20, 400))
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2 and raw:  # truncate or flip a byte
        i = rng.randrange(len(raw))
        raw = raw[:i] if rng.random() < 0.5 else raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]
    return raw


def test_property_checkpoint_bodies_raise_only_the_projects_error():
    """1,500 generated bodies (fixed seed): a (finite, positive, not future) result or CheckpointBodyError."""
    from exporter.http import CheckpointBodyError

    rng = random.Random(15)
    now = 1.75e9
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(1500):
        raw = _random_body(rng)
        try:
            ts, job = parse_checkpoint(raw, now)
        except CheckpointBodyError:
            outcomes["refused"] += 1
            continue
        assert 0 < ts <= now + 5 and isinstance(job, str), raw[:80]
        outcomes["ok"] += 1
    assert outcomes["ok"] > 20 and outcomes["refused"] > 500


def test_property_checkpoint_bodies_over_http_always_get_an_answer(served):
    """200 generated bodies posted for real: every one gets 204 or 400, and the server keeps serving."""
    base, port, server, _ = served()
    rng = random.Random(150)
    with requests.Session() as s:
        for _ in range(200):
            raw = _random_body(rng)[:60000]
            r = s.post(base + "/api/v1/checkpoint", data=raw, timeout=10)
            assert r.status_code in (204, 400), (raw[:80], r.status_code)
    assert server.bad.get("internal_error") == 0
    assert requests.get(base + "/metrics", timeout=5).status_code == 200
