"""The loop and the HTTP server, in process: isolation, lost devices, the cached scrape path, TLS and basic auth."""

from __future__ import annotations

import gzip
import subprocess
import threading

import bcrypt
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.backends.simulated import SimulatedBackend
from exporter.collectors.hpu import HpuCollector
from exporter.http import Site, serve
from exporter.loop import Loop
from exporter.readings import BackendResult
from exporter.webconfig import WebConfigError, load
from tests.support.procs import free_port


def samples(exposition: bytes) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(exposition.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(exposition: bytes, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples(exposition).items() if n == name}


class Counting:
    """Wraps a backend and counts reads, to prove scrapes never reach it."""

    def __init__(self, inner):
        self.inner, self.name, self.reads, self.slow_reads = inner, inner.name, 0, 0

    def read(self, *, slow: bool) -> BackendResult:
        self.reads += 1
        self.slow_reads += slow
        return self.inner.read(slow=slow)


class Broken:
    name = "broken"

    def collect(self, now, partial):
        raise RuntimeError("the source is down")


def make_loop(profile="training", devices=8, extra=(), slow_interval=60.0, clock=None):
    backend = Counting(SimulatedBackend(devices=devices, profile=profile, seed=1, interval=1.0))
    kw = {"clock": clock} if clock else {}
    loop = Loop([HpuCollector(backend, slow_interval), *extra], interval=1.0, version="test",
                backend="simulated", **kw)
    return loop, backend


def test_a_failing_collector_is_isolated_and_marked():
    loop, _ = make_loop(extra=[Broken()])
    exp = loop.tick().text
    ok = series(exp, "gaudi_exporter_collector_success")
    assert ok[(("collector", "broken"),)] == 0
    assert ok[(("collector", "hpu"),)] == 1
    assert len(series(exp, "gaudi_hpu_utilization_ratio")) == 8


def test_a_lost_device_stops_its_series_and_counts_errors():
    loop, _ = make_loop(profile="degraded")
    for _ in range(4):
        exp = loop.tick().text
    util = series(exp, "gaudi_hpu_utilization_ratio")
    assert len(util) == 7
    assert not any(dict(k)["hpu"] == "7" for k in util)
    up = series(exp, "gaudi_hpu_up")
    assert up[(("hpu", "7"), ("uuid", "SIM-HL-325L-0001-07"))] == 0
    assert sum(up.values()) == 7
    errors = series(exp, "gaudi_hpu_read_errors_total")
    assert errors[(("hpu", "7"), ("uuid", "SIM-HL-325L-0001-07"))] == 2
    assert errors[(("hpu", "0"), ("uuid", "SIM-HL-325L-0001-00"))] == 0  # every known HPU from its first read


def test_slow_readings_follow_their_own_cadence():
    t = [1000.0]
    loop, backend = make_loop(slow_interval=30.0, clock=lambda: t[0])
    for _ in range(10):
        exp = loop.tick().text
        t[0] += 5
    assert backend.reads == 10
    assert backend.slow_reads == 2  # at 1000 and 1030
    ports = series(exp, "gaudi_hpu_nic_ports")  # reused between slow reads
    assert len(ports) == 8 * 2 and sum(v for k, v in ports.items() if dict(k)["state"] == "up") == 8 * 24


def test_scrapes_serve_the_cache_and_never_read_the_device():
    loop, backend = make_loop()
    loop.tick()
    port = free_port()
    server, _ = serve(f"127.0.0.1:{port}", Site("/metrics", lambda: loop.exposition, loop.healthy,
                                                 lambda: {"version": "test"}))
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(20):
            r = requests.get(base + "/metrics", timeout=5)
        assert backend.reads == 1
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert len(series(r.content, "gaudi_hpu_utilization_ratio")) == 8
        om = requests.get(base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                          timeout=5)
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        gz = requests.get(base + "/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
        assert gz.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(gz.raw.read()) == loop.exposition.text
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        landing = requests.get(base + "/", timeout=5)
        assert "gaudi-exporter" in landing.text and 'href="/metrics"' in landing.text
        assert requests.get(base + "/nope", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_is_503_when_the_loop_stalls():
    loop, _ = make_loop()
    loop.tick()
    loop.last_tick_finished -= 3600  # as if the loop had been stuck for an hour
    port = free_port()
    server, _ = serve(f"127.0.0.1:{port}", Site("/metrics", lambda: loop.exposition, loop.healthy, dict))
    try:
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 503
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tls_files(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    return tmp_path


def test_tls_and_basic_auth_from_a_web_config_file(tls_files):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tls_files / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    web = load(tls_files / "web.yml")
    loop, _ = make_loop()
    loop.tick()
    got: list[float] = []
    port = free_port()
    server, _ = serve(f"127.0.0.1:{port}", Site("/metrics", lambda: loop.exposition, loop.healthy, dict,
                                                 record_checkpoint=lambda ts, job: got.append(ts), web=web))
    try:
        base, ca = f"https://127.0.0.1:{port}", str(tls_files / "cert.pem")
        assert requests.get(base + "/metrics", verify=ca, timeout=5).status_code == 401
        assert requests.get(base + "/metrics", verify=ca, auth=("prometheus", "wrong"), timeout=5).status_code == 401
        assert requests.get(base + "/", verify=ca, timeout=5).status_code == 401
        assert requests.get(base + "/healthz", verify=ca, timeout=5).status_code == 200  # probes carry no password
        r = requests.get(base + "/metrics", verify=ca, auth=("prometheus", "s3cret"), timeout=5)
        assert r.status_code == 200 and b"gaudi_hpu_utilization_ratio" in r.content
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(base + "/metrics", timeout=5)  # not trusted without the CA
        plain = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)  # plain HTTP: Go's answer, no data
        assert plain.status_code == 400 and plain.text == "Client sent an HTTP request to an HTTPS server.\n"
        r = requests.post(base + "/api/v1/checkpoint", json={"timestamp": 1.7e9, "job": "j"}, verify=ca,
                          auth=("prometheus", "s3cret"), timeout=5)
        assert r.status_code == 204 and got == [1.7e9]
    finally:
        server.shutdown()
        server.server_close()


def test_checkpoint_endpoint_validates_its_body():
    loop, _ = make_loop()
    loop.tick()
    got: list[float] = []
    port = free_port()
    server, _ = serve(f"127.0.0.1:{port}", Site("/metrics", lambda: loop.exposition, loop.healthy, dict,
                                                 record_checkpoint=lambda ts, job: got.append(ts)))
    try:
        url = f"http://127.0.0.1:{port}/api/v1/checkpoint"
        bad = requests.post(url, data=b"{not json", timeout=5)
        assert bad.status_code == 400 and "timestamp" in bad.text
        assert requests.post(url, json={"timestamp": 4e9}, timeout=5).status_code == 400  # in the future
        assert requests.post(url, json={"timestamp": 1.7e9}, timeout=5).status_code == 204
        assert got == [1.7e9]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, needle", [
    ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.pem\n", "cannot load the certificate"),
    ("basic_auth_users:\n  admin: plaintext\n", "basic_auth_users.admin: must be a bcrypt hash"),
    ("tls_config: {}\n", "tls_config: unknown key"),
])
def test_bad_web_config_names_the_key(tmp_path, text, needle):
    (tmp_path / "web.yml").write_text(text)
    with pytest.raises(WebConfigError, match=needle):
        load(tmp_path / "web.yml")


def test_loop_thread_ticks_in_the_background():
    loop, backend = make_loop()
    stop = threading.Event()
    t = loop.start(stop)
    try:
        import time

        deadline = time.monotonic() + 10
        while loop.ticks < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.ticks >= 2 and loop.healthy()
    finally:
        stop.set()
        t.join(2)
    assert not t.is_alive()


def test_our_writer_says_what_prometheus_clients_writer_says():
    """The fast writer must parse to the same samples as prometheus_client's own, in both formats."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_om
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

    loop, _ = make_loop(profile="degraded")
    for _ in range(3):
        exp = loop.tick()
    reference = generate_latest(loop.renderer.registry)
    assert samples(exp.text).keys() == samples(reference).keys()
    ours = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parse_om(exp.openmetrics.decode()) for s in f.samples}
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in parse_om(generate_om(loop.renderer.registry).decode()) for s in f.samples}
    assert ours.keys() == theirs.keys()
    volatile = ("process_", "gaudi_exporter_collector_duration", "gaudi_exporter_last_collection")
    assert {k: v for k, v in ours.items() if not k[0].startswith(volatile)} == \
        {k: v for k, v in theirs.items() if not k[0].startswith(volatile)}


def test_the_daemon_serves_tls_and_basic_auth_from_web_config_file(tls_files):
    from tests.support.procs import exporter, wait_http

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tls_files / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    args = ["--backend", "simulated", "--interval", "1", "--web.config.file", str(tls_files / "web.yml")]
    with exporter(args, wait=False) as (proc, base):
        url = base.replace("http://", "https://") + "/metrics"
        r = wait_http(url, proc=proc, verify=str(tls_files / "cert.pem"), auth=("prometheus", "s3cret"))
        assert b'gaudi_exporter_build_info{backend="simulated"' in r.content
        assert requests.get(url, verify=str(tls_files / "cert.pem"), timeout=5).status_code == 401
