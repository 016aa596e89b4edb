"""--web.config.file with exporter-toolkit's semantics: refusals by name, TLS versions, client certificates end to
end, response headers, bcrypt checks, and a real Prometheus scraping a TLS + basic-auth + client-cert exporter."""

from __future__ import annotations

import random
import socket
import ssl
import statistics
import threading
import time

import bcrypt
import pytest
import requests
import yaml

from exporter.backends.simulated import SimulatedBackend
from exporter.collectors.hpu import HpuCollector
from exporter.http import Site, serve
from exporter.loop import Loop
from exporter.webconfig import VerdictCache, WebConfig, WebConfigError, load
from tests.support.certs import make_ca, make_cert
from tests.support.procs import PROMETHEUS, _serving, free_port, query, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, two client certificates from the CA and one from another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    return {"dir": d, "ca": ca[0], "server": make_cert(d, "server", ca, "IP:127.0.0.1"),
            "client": make_cert(d, "prometheus", ca, "DNS:prometheus", client=True),
            "intruder": make_cert(d, "intruder", ca, "DNS:intruder", client=True),
            "rogue": make_cert(d, "rogue", other, "DNS:prometheus", client=True)}


def write(d, text: str):
    p = d / "web.yml"
    p.write_text(text)
    return p


def tls_block(pki, extra: str = "") -> str:
    return (f"tls_server_config:\n  cert_file: {pki['server'][0]}\n  key_file: {pki['server'][1]}\n" + extra)


@pytest.fixture
def serving():
    started = []
    lp = Loop([HpuCollector(SimulatedBackend(devices=1, seed=1, interval=1.0), 60.0)], interval=1.0,
              version="test", backend="simulated")
    lp.tick()

    def start(web: WebConfig) -> tuple[str, int]:
        port = free_port()
        server, _ = serve(f"127.0.0.1:{port}", Site("/metrics", lambda: lp.exposition, lp.healthy, dict, web=web))
        started.append(server)
        return f"https://127.0.0.1:{port}", port

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("extra, key", [
    ("  min_version: TLSv1.3\n", "tls_server_config.min_version"),  # became a TLS 1.2 minimum
    ("  min_version: tls13\n", "tls_server_config.min_version"),
    ("  max_version: TLS14\n", "tls_server_config.max_version"),
    ("  min_version: TLS13\n  max_version: TLS12\n", "tls_server_config.min_version"),
    ("  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),  # required nothing
    ("  client_auth_type: Bogus\n", "tls_server_config.client_auth_type"),
    ("  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type"),
    ("  client_ca_file: {ca}\n", "tls_server_config.client_auth_type"),  # a CA without a policy
    ("  cipher_suites: [TLS_MADE_UP]\n", "tls_server_config.cipher_suites"),
    ("  curve_preferences: [X25519]\n", "tls_server_config.curve_preferences"),
    ("  cert_filse: x\n", "tls_server_config.cert_filse"),
    ("http_server_config:\n  anything: 1\n", "http_server_config.anything"),  # was accepted and ignored
    ("http_server_config:\n  headers:\n    Content-Type: foo\n", "http_server_config.headers.Content-Type"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: foo\n", "http_server_config.headers.X-Frame-Options"),
    ("http_server_config:\n  http2: maybe\n", "http_server_config.http2"),
    ("rate_limit:\n  interval: fast\n", "rate_limit.interval"),
    ("basic_auth_users:\n  john: doe\n", "basic_auth_users.john"),
    ("basic_auth_users:\n  john: '$2y$10$short'\n", "basic_auth_users.john"),
    ("basic_auth_users:\n  john: '$2y$99$" + "a" * 53 + "'\n", "basic_auth_users.john"),
    ("basic_auth_users:\n  john: 12\n", "basic_auth_users.john"),
])
def test_values_exporter_toolkit_refuses_are_refused_by_name(tmp_path, pki, extra, key):
    text = tls_block(pki, extra.format(ca=pki["ca"])) if extra.startswith("  ") else tls_block(pki) + extra
    path = write(tmp_path, text)
    with pytest.raises(WebConfigError) as e:
        load(path)
    assert str(path) in str(e.value) and key in str(e.value)


@pytest.mark.parametrize("name, version", [("TLS10", ssl.TLSVersion.TLSv1), ("TLS11", ssl.TLSVersion.TLSv1_1),
                                           ("TLS12", ssl.TLSVersion.TLSv1_2), ("TLS13", ssl.TLSVersion.TLSv1_3)])
def test_min_version_takes_every_exporter_toolkit_name(tmp_path, pki, name, version):
    web = load(write(tmp_path, tls_block(pki, f"  min_version: {name}\n")))
    assert web.ssl_context.minimum_version == version


def _handshake(port: int, ca, max_version=None, cert=None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if max_version:
        ctx.maximum_version = max_version
    if cert:
        ctx.load_cert_chain(*map(str, cert))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        status = out.split(b"\r\n", 1)[0].decode()
        return f"{s.version()} {status}"


def _refused(port: int, ca, cert=None) -> bool:
    """The server would not serve this client: the handshake failed or the connection closed without a response."""
    try:
        return not _handshake(port, ca, cert=cert).endswith("200 OK")
    except (ssl.SSLError, OSError):
        return True


def test_a_tls13_minimum_refuses_tls12_clients(tmp_path, pki, serving):
    _, port = serving(load(write(tmp_path, tls_block(pki, "  min_version: TLS13\n"))))
    assert _handshake(port, pki["ca"]) == "TLSv1.3 HTTP/1.1 200 OK"
    with pytest.raises(ssl.SSLError):
        _handshake(port, pki["ca"], max_version=ssl.TLSVersion.TLSv1_2)


def test_cipher_suites_and_max_version_apply(tmp_path, pki, serving):
    _, port = serving(load(write(tmp_path, tls_block(
        pki, "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"))))
    assert _handshake(port, pki["ca"]) == "TLSv1.2 HTTP/1.1 200 OK"


def test_mutual_tls_end_to_end(tmp_path, pki, serving):
    web = load(write(tmp_path, tls_block(pki, f"  client_auth_type: RequireAndVerifyClientCert\n"
                                              f"  client_ca_file: {pki['ca']}\n")))
    base, port = serving(web)
    ok = requests.get(base + "/metrics", verify=str(pki["ca"]), cert=tuple(map(str, pki["client"])), timeout=5)
    assert ok.status_code == 200 and b"gaudi_exporter_build_info" in ok.content
    assert _refused(port, pki["ca"])  # no certificate: got 200 before
    assert _refused(port, pki["ca"], cert=pki["rogue"])  # a certificate from another CA
    assert not _refused(port, pki["ca"], cert=pki["client"])


def test_client_allowed_sans(tmp_path, pki, serving):
    web = load(write(tmp_path, tls_block(pki, f"  client_auth_type: RequireAndVerifyClientCert\n"
                                              f"  client_ca_file: {pki['ca']}\n  client_allowed_sans: [prometheus]\n")))
    base, port = serving(web)
    assert _handshake(port, pki["ca"], cert=pki["client"]).endswith("200 OK")
    assert _refused(port, pki["ca"], cert=pki["intruder"])  # signed by the CA, but not a SAN on the list


def test_http_server_config_headers_are_sent(tmp_path, pki, serving):
    web = load(write(tmp_path, tls_block(pki) + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                     "    Strict-Transport-Security: max-age=31536000\n    X-Content-Type-Options: nosniff\n"))
    base, _ = serving(web)
    r = requests.get(base + "/metrics", verify=str(pki["ca"]), timeout=5)
    assert r.headers["X-Frame-Options"] == "deny" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"


def _users_config(tmp_path, rounds: int = 4, **users: str):
    lines = "".join(f"  {u}: '{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds)).decode()}'\n"
                    for u, p in users.items())
    return write(tmp_path, "basic_auth_users:\n" + lines)


def test_a_password_over_72_bytes_gets_401_not_a_dropped_connection(tmp_path, serving):
    base, _ = serving(load(_users_config(tmp_path, prometheus="s3cret")))
    base = base.replace("https", "http")
    with requests.Session() as s:
        assert s.get(base + "/metrics", auth=("prometheus", "x" * 100), timeout=5).status_code == 401
        assert s.get(base + "/metrics", auth=("prometheus", "s3cret" + "x" * 80), timeout=5).status_code == 401
        assert s.get(base + "/metrics", auth=("prometheus", "s3cret"), timeout=5).status_code == 200


def _median_check_seconds(web: WebConfig, user: str, n: int = 5) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        assert web.check(user, f"wrong-{user}-{i}".encode()) is False
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_unknown_users_cost_the_same_bcrypt_work_as_known_ones(tmp_path):
    """Timing must not tell which users exist: 1.25 ms for an unknown user vs 65 ms for a wrong password."""
    web = load(_users_config(tmp_path, rounds=9, prometheus="s3cret"))
    web.bcrypt_duty = 1.0  # measure the checks alone, not the CPU budget's pauses
    times: dict[str, list[float]] = {"prometheus": [], "nobody": []}
    for i in range(7):  # interleaved, and the fastest of each: other load on the machine only adds time
        for user in times:
            t0 = time.perf_counter()
            assert web.check(user, f"wrong-{i}".encode()) is False
            times[user].append(time.perf_counter() - t0)
    known, unknown = min(times["prometheus"]), min(times["nobody"])
    assert unknown >= 0.5 * known, (unknown, known)


def test_bcrypt_checks_run_one_at_a_time_within_a_cpu_budget(tmp_path):
    """8 clients guessing passwords used 0.72 cores; checks are now serialised and paced (half a core)."""
    web = load(_users_config(tmp_path, rounds=8, prometheus="s3cret"))
    web.bcrypt_duty = 1.0
    single = _median_check_seconds(web, "prometheus", 3)  # one check alone, no pacing
    web.bcrypt_duty = 0.5
    threads = [threading.Thread(target=lambda i=i: web.check("prometheus", b"guess-%d" % i)) for i in range(8)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - t0 >= 8 * single  # serialised at least; paced at half a core: ~15x


def test_the_verdict_cache_evicts_by_age_and_keeps_the_busy_entries():
    now = [0.0]
    cache = VerdictCache(max_entries=100, max_age=600, clock=lambda: now[0])
    cache.put(b"prometheus", True)
    for i in range(1000):  # a flood of wrong guesses
        cache.put(b"guess-%d" % i, False)
        if i % 50 == 0:
            assert cache.get(b"prometheus") is True  # Prometheus scrapes in between
    assert cache.get(b"prometheus") is True and len(cache) == 100
    now[0] += 601
    assert cache.get(b"prometheus") is None  # recomputed after its age, not kept forever


def test_a_flood_of_wrong_passwords_does_not_evict_prometheus(tmp_path):
    web = load(_users_config(tmp_path, prometheus="s3cret"))
    web.bcrypt_duty = 1.0
    web.cache = VerdictCache(max_entries=100)  # the same policy as the default 1,024, with fewer bcrypt runs
    assert web.check("prometheus", b"s3cret")
    for i in range(300):
        web.check("prometheus", b"guess-%d" % i)
        if i % 20 == 0:
            assert web.cached("prometheus", b"s3cret") is True


def test_a_real_prometheus_scrapes_a_tls_basic_auth_and_client_cert_exporter(tmp_path, pki):
    """Prometheus' own tls_config (CA, client certificate) and basic_auth against our web config."""
    from tests.support.procs import exporter

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = write(tmp_path, tls_block(pki, f"  client_auth_type: RequireAndVerifyClientCert\n"
                                         f"  client_ca_file: {pki['ca']}\n  min_version: TLS12\n")
                + f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    port = free_port()
    (tmp_path / "password").write_text("s3cret")
    cfg = {"global": {"scrape_interval": "1s"}, "scrape_configs": [{
        "job_name": "gaudi", "scheme": "https", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        "tls_config": {"ca_file": str(pki["ca"]), "cert_file": str(pki["client"][0]),
                       "key_file": str(pki["client"][1])},
        "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "password")}}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    prom_port = free_port()
    with exporter(["--backend", "simulated", "--interval", "1", "--web.config.file", str(web)], port=port,
                  wait=False), \
            _serving([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                      "--log.level=warn"], prom_port) as prom:
        up = wait_for(lambda: [r for r in query(prom, 'up{job="gaudi"}') if r["value"][1] == "1"], 30,
                      what="Prometheus scraping the TLS exporter")
        assert up
        assert query(prom, 'gaudi_exporter_build_info{job="gaudi",backend="simulated"}')


# --- generated web configs: only WebConfigError comes out

_FRAGMENTS = {
    "tls_server_config": lambda r, p: r.choice([
        None, {}, [], "x", {"cert_file": str(p["server"][0]), "key_file": str(p["server"][1])},
        {"cert_file": r.choice([1, None, [], "", "missing.pem", str(p["server"][0])]),
         "key_file": r.choice([{}, True, str(p["server"][1]), "nope"])},
        {"cert_file": str(p["server"][0]), "key_file": str(p["server"][1]),
         r.choice(["min_version", "max_version", "client_auth_type", "client_ca_file", "cipher_suites",
                   "client_allowed_sans", "prefer_server_cipher_suites", "client_ca", "bogus"]):
         r.choice(["TLS13", "TLS10", "tls12", 1.2, None, [], ["x"], True, "RequireAndVerifyClientCert",
                   str(p["ca"]), "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n", {"a": 1}])}]),
    "basic_auth_users": lambda r, p: r.choice([
        None, [], "x", {"u": "$2y$04$" + "".join(r.choice("./ab0") for _ in range(r.choice([52, 53, 54])))},
        {r.choice(["u", 1, "", "a:b", None]): r.choice(["$2b$04$" + "a" * 53, "pw", 7, None, ["x"]])}]),
    "http_server_config": lambda r, p: r.choice([
        None, [], {"http2": r.choice([True, "yes", 1])}, {"headers": r.choice([
            None, [], {"X-Frame-Options": r.choice(["deny", "DENY", "", 1, None, "a\nb"])},
            {r.choice(["Content-Security-Policy", "Server", "X-XSS-Protection"]): r.choice(["1", 1.5, {}])}])}]),
    "rate_limit": lambda r, p: r.choice([None, {"interval": r.choice(["1s", "100ms", "1m30s", "x", 5, -1, True]),
                                                "burst": r.choice([1, 0, -2, "3", None])}, ["x"]]),
    "junk": lambda r, p: r.choice([1, "x"]),
}


def _generated_configs(pki, n: int, seed: int):
    r = random.Random(seed)
    for _ in range(n):
        kind = r.random()
        if kind < 0.08:
            yield bytes(r.randrange(256) for _ in range(r.randint(0, 60)))
        elif kind < 0.12:
            yield b"a: " + b"[" * r.randint(1, 1200)
        elif kind < 0.15:
            yield r.choice([b"- 1\n- 2\n", b"!!python/object:os.system x", b"a: *b", b"\xff\xfe", b"{{{", b"~"])
        else:
            doc = {k: f(r, pki) for k, f in _FRAGMENTS.items() if r.random() < 0.5}
            yield yaml.safe_dump(doc).encode()


def test_property_generated_web_configs_raise_only_web_config_error(tmp_path, pki):
    """400 generated files (fixed seed): each loads or is refused with WebConfigError naming the file."""
    outcomes = {"loaded": 0, "refused": 0}
    path = tmp_path / "web.yml"
    for raw in _generated_configs(pki, 400, seed=11):
        path.write_bytes(raw)
        try:
            cfg = load(path)
        except WebConfigError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
            continue
        assert isinstance(cfg, WebConfig)
        outcomes["loaded"] += 1
    assert outcomes["loaded"] > 10 and outcomes["refused"] > 100, outcomes


def test_rate_limit_answers_429_beyond_its_burst(tmp_path, serving):
    base, _ = serving(load(write(tmp_path, "rate_limit:\n  interval: 10s\n  burst: 3\n")))
    base = base.replace("https", "http")
    codes = [requests.get(base + "/metrics", timeout=5).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert requests.get(base + "/healthz", timeout=5).status_code == 200  # liveness probes are not limited
