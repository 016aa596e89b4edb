"""The daemon's HTTP side as a process: signals (SIGHUP reloads certificates, stops are logged), plain HTTP on the
TLS port, and hostile requests that leave one JSON log line each, never a traceback."""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import time

import bcrypt
import pytest
import requests

from tests.support.certs import make_ca, make_cert
from tests.support.procs import exporter, wait_for, wait_http


@pytest.fixture
def tls_dir(tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, "server", ca, "IP:127.0.0.1")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                                      f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return tmp_path, ca


def _output(proc) -> list[str]:
    proc.wait(10)
    return proc.stdout.read().decode(errors="replace").splitlines()


def _served_cert(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def test_sighup_reloads_the_certificates_and_every_stop_signal_is_logged(tls_dir):
    d, ca = tls_dir
    with exporter(["--backend", "simulated", "--interval", "1", "--web.config.file", str(d / "web.yml")],
                  wait=False) as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        url = base.replace("http://", "https://") + "/metrics"
        wait_http(url, proc=proc, verify=str(ca[0]), auth=("prometheus", "s3cret"))
        before = _served_cert(port)
        make_cert(d, "server", ca, "IP:127.0.0.1")  # a renewed certificate in the same files
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _served_cert(port) != before, 10, 0.2, "the renewed certificate served")
        assert proc.poll() is None  # SIGHUP used to kill it without a word
        assert requests.get(url, verify=str(ca[0]), auth=("prometheus", "s3cret"), timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        lines = _output(proc)
    assert proc.returncode == 0
    text = "\n".join(lines)
    assert "received SIGHUP" in text and "reloaded" in text
    assert "received SIGTERM, stopping" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_are_logged(sig):
    with exporter(["--backend", "simulated", "--interval", "1"]) as (proc, base):
        proc.send_signal(signal.SIGHUP)  # nothing to reload: logged, still running
        time.sleep(0.5)
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        proc.send_signal(sig)
        text = "\n".join(_output(proc))
    assert "received SIGHUP" in text
    assert f"received {sig.name}, stopping" in text


def _raw(port: int, data: bytes, tls_ca=None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        s = raw
        if tls_ca is not None:
            s = ssl.create_default_context(cafile=str(tls_ca)).wrap_socket(raw, server_hostname="127.0.0.1")
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, OSError):
            pass
        return out


def test_hostile_requests_get_answers_and_one_json_log_line_each(tls_dir):
    d, ca = tls_dir
    args = ["--backend", "simulated", "--interval", "0.5", "--web.config.file", str(d / "web.yml"),
            "--log.format", "json", "--log.level", "debug"]
    with exporter(args, wait=False) as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        https = base.replace("http://", "https://")
        wait_http(https + "/metrics", proc=proc, verify=str(ca[0]), auth=("prometheus", "s3cret"))
        plain = _raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
        assert _raw(port, b"\x16\x03\x01\x00\x05hello") == b""  # a broken handshake: closed, logged at debug
        with socket.create_connection(("127.0.0.1", port)):
            pass  # connect and vanish
        auth = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
        post = f"POST /api/v1/checkpoint HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n"
        for body_head in (post + "Content-Length: abc\r\n\r\n",
                          post + "Content-Length: 19\r\n\r\n{\"timestamp\":1e400}",
                          post + "Content-Length: 20000\r\n\r\n" + "[" * 20000):
            out = _raw(port, body_head.encode(), tls_ca=ca[0])
            assert out.startswith(b"HTTP/1.1 400 "), out[:100]
        with socket.create_connection(("127.0.0.1", port)) as raw:
            s = ssl.create_default_context(cafile=str(ca[0])).wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall((post + "Content-Length: 100\r\n\r\n{\"ti").encode())
            s.close()  # a client that goes away mid-body

        def counted():
            r = requests.get(https + "/metrics", verify=str(ca[0]), auth=("prometheus", "s3cret"), timeout=5)
            return 'gaudi_exporter_http_bad_requests_total{reason="plain_http_to_tls"} 1' in r.text and \
                'reason="bad_content_length"} 1' in r.text and 'reason="tls_handshake"} 1' in r.text and \
                'reason="bad_checkpoint"} 2' in r.text and 'reason="client_disconnect"} 1' in r.text
        wait_for(counted, 10, 0.3, "bad requests counted in the metric (rendered with the next tick)")
        proc.send_signal(signal.SIGTERM)
        lines = _output(proc)
    records = [json.loads(line) for line in lines]  # every line is JSON: no traceback, no stray text
    assert not [r for r in records if "Traceback" in r.get("msg", "") or "exc" in r]
    plain_lines = [r for r in records if "plain_http_to_tls" in r["msg"]]
    assert len(plain_lines) == 1 and plain_lines[0]["level"] == "info"
    assert len([r for r in records if "tls_handshake" in r["msg"]]) == 1
