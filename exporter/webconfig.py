"""``--web.config.file``: TLS and basic auth in the exporter-toolkit's YAML format, with its semantics.

Same keys and values as exporter-toolkit (docs/web-configuration.md there): a value it would refuse is refused here
too, naming the file and the key, and nothing is accepted and then ignored. What Python's ssl module cannot do the
way Go's crypto/tls does (client certificates accepted without verification, curve lists, inline keys) is refused
by name rather than approximated. basic auth: bcrypt hashes validated at load, verdicts cached by age, unknown
users cost the same bcrypt work as known ones, and bcrypt checks run one at a time under a CPU budget.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import ssl
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter import yamlfile

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_ca", "client_auth_type", "min_version",
            "max_version", "cipher_suites", "prefer_server_cipher_suites", "client_allowed_sans",
            "cert", "key", "curve_preferences")
# exporter-toolkit keys that Python's ssl cannot honour as Go does: refused with the reason, never ignored
TLS_UNSUPPORTED = {
    "cert": "inline certificates are not supported; put the PEM in a file and name it in cert_file",
    "key": "inline keys are not supported; put the PEM in a file and name it in key_file",
    "curve_preferences": "Python's ssl module cannot set a curve preference list; remove the key to use "
                         "OpenSSL's defaults (X25519, P-256, P-384, P-521)",
}
HTTP_KEYS = ("headers", "http2")
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
            "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's client_auth_type values (Go's tls.ClientAuthType names) -> what ssl can do
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# http_server_config.headers: exporter-toolkit's fixed set; None = any value
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None}
# Go's crypto/tls.CipherSuites() names -> OpenSSL names; the TLS 1.3 ones are always on (Go cannot configure them)
CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None, "TLS_AES_256_GCM_SHA384": None, "TLS_CHACHA20_POLY1305_SHA256": None,
}
BCRYPT_RE = re.compile(rb"^\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
GO_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

CACHE_MAX_ENTRIES = 1024
CACHE_MAX_AGE_SECONDS = 600.0  # a verdict is recomputed after this long (Prometheus re-uses it every scrape)
BCRYPT_DUTY = 0.5  # bcrypt checks may use at most this share of one core (the rest of the node is for training)
MAX_BYTES_PASSWORD = 72  # bcrypt reads no further; a longer password cannot match (exporter-toolkit: 401)


class WebConfigError(ValueError):
    """A web config the exporter refuses; the message names the file and the key."""


class VerdictCache:
    """Basic-auth verdicts by keyed digest; entries expire by age and the least recently used go first."""

    def __init__(self, max_entries: int = CACHE_MAX_ENTRIES, max_age: float = CACHE_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_age, self.clock = max_entries, max_age, clock
        self._entries: OrderedDict[bytes, tuple[float, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bool | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            if self.clock() - hit[0] > self.max_age:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: bytes, verdict: bool) -> None:
        with self._lock:
            self._entries[key] = (self.clock(), verdict)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class TlsSettings:
    """What a new connection needs: the context, and the SANs a client certificate must carry (if any)."""

    context: ssl.SSLContext
    allowed_sans: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()  # watched for rotation (cert-manager, Kubernetes Secret updates)


@dataclass
class WebConfig:
    path: Path | None = None
    tls: TlsSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit: tuple[float, int] | None = None  # (seconds between requests, burst)
    dummy_hash: bytes = b""
    cache: VerdictCache = field(default_factory=VerdictCache)
    bcrypt_duty: float = BCRYPT_DUTY
    _bcrypt_lock: threading.Lock = field(default_factory=threading.Lock)
    _next_bcrypt: float = 0.0
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context if self.tls else None

    def cached(self, user: str, password: bytes) -> bool | None:
        """The remembered verdict for these credentials, or None when bcrypt must decide."""
        return self.cache.get(self._key(user, password))

    def _key(self, user: str, password: bytes) -> bytes:
        hashed = self.users.get(user, self.dummy_hash)
        return hmac.new(self._secret, user.encode() + b"\0" + hashed + b"\0" + password, hashlib.sha256).digest()

    def check(self, user: str, password: bytes) -> bool:
        """bcrypt is slow on purpose: the same work for unknown users, one check at a time, within a CPU budget."""
        verdict = self.cached(user, password)
        if verdict is not None:
            return verdict
        import bcrypt

        known = user in self.users
        hashed = self.users.get(user, self.dummy_hash)
        with self._bcrypt_lock:
            rest = self._next_bcrypt - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            t0 = time.monotonic()
            try:
                ok = bcrypt.checkpw(password[:MAX_BYTES_PASSWORD], hashed) and len(password) <= MAX_BYTES_PASSWORD
            except ValueError:  # a hash bcrypt cannot use (validated at load, so not expected) never matches
                ok = False
            spent = time.monotonic() - t0
            self._next_bcrypt = time.monotonic() + spent * (1 / self.bcrypt_duty - 1)
        ok = ok and known
        self.cache.put(self._key(user, password), ok)
        return ok


def _err(path: Path, key: str, message: str) -> WebConfigError:
    return WebConfigError(f"web config {path}: {key}: {message}")


def _str(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _err(path, key, f"must be a non-empty string, got {value!r}")
    return value


def _mapping(path: Path, key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, key, f"must be a mapping, got {type(value).__name__}")
    return value


def _known(path: Path, prefix: str, mapping: dict, allowed: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in allowed:
            raise _err(path, f"{prefix}{key}", f"unknown key (expected one of {', '.join(allowed)})")


def go_duration(text: Any) -> float:
    """Go's time.ParseDuration for the forms configs use ('1s', '100ms', '1m30s'); ValueError otherwise."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"expected a duration like 1s or 100ms, got {text!r}")
    text = str(text)
    if text == "0":
        return 0.0
    if not GO_DURATION_RE.match(text):
        raise ValueError(f"expected a duration like 1s or 100ms, got {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))


def _tls(path: Path, tls: dict) -> TlsSettings:
    _known(path, "tls_server_config.", tls, TLS_KEYS)
    for key, why in TLS_UNSUPPORTED.items():
        if key in tls:
            raise _err(path, f"tls_server_config.{key}", why)
    for key in ("cert_file", "key_file"):
        if key not in tls:
            raise _err(path, f"tls_server_config.{key}", "is required when tls_server_config is set")
    base = path.parent
    cert = base / _str(path, "tls_server_config.cert_file", tls["cert_file"])
    key_file = base / _str(path, "tls_server_config.key_file", tls["key_file"])

    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = tls.get(key, default)
        if not isinstance(name, str) or name not in VERSIONS:
            raise _err(path, f"tls_server_config.{key}", f"unknown TLS version {name!r} (expected one of "
                       f"{', '.join(VERSIONS)})")
        versions[key] = VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise _err(path, "tls_server_config.min_version", "is above max_version")

    auth = tls.get("client_auth_type", "NoClientCert")
    if not isinstance(auth, str):
        raise _err(path, "tls_server_config.client_auth_type", f"must be a string, got {auth!r}")
    if auth in CLIENT_AUTH_UNSUPPORTED:
        raise _err(path, "tls_server_config.client_auth_type", f"{auth} accepts client certificates without "
                   "verifying them, which Python's ssl module cannot do (exporter-toolkit calls it insecure); use "
                   "RequireAndVerifyClientCert with client_ca_file")
    if auth not in CLIENT_AUTH:
        raise _err(path, "tls_server_config.client_auth_type", f"invalid value {auth!r} (expected one of "
                   f"{', '.join([*CLIENT_AUTH, *CLIENT_AUTH_UNSUPPORTED])})")
    ca_file = tls.get("client_ca_file")
    ca_text = tls.get("client_ca")
    if ca_file is not None:
        ca_file = base / _str(path, "tls_server_config.client_ca_file", ca_file)
    if ca_text is not None:
        _str(path, "tls_server_config.client_ca", ca_text)
    if (ca_file or ca_text) and auth == "NoClientCert":
        raise _err(path, "tls_server_config.client_auth_type", "client CAs are configured without a client auth "
                   "policy: set client_auth_type: RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if auth != "NoClientCert" and not (ca_file or ca_text):
        raise _err(path, "tls_server_config.client_ca_file", f"client_auth_type {auth} needs the CA that signs "
                   "client certificates (client_ca_file or client_ca)")

    sans = tls.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise _err(path, "tls_server_config.client_allowed_sans", "must be a list of strings")
        if auth == "NoClientCert":
            raise _err(path, "tls_server_config.client_allowed_sans", "needs client certificates "
                       "(client_auth_type: RequireAndVerifyClientCert)")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS10/TLS11 are exporter-toolkit values; ssl warns that they are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = versions["min_version"]
        ctx.maximum_version = versions["max_version"]
    ciphers = tls.get("cipher_suites")
    if ciphers is not None:
        if not isinstance(ciphers, list) or not ciphers:
            raise _err(path, "tls_server_config.cipher_suites", "must be a non-empty list of cipher suite names")
        for c in ciphers:
            if not isinstance(c, str) or c not in CIPHERS:
                raise _err(path, "tls_server_config.cipher_suites", f"unknown cipher: {c!r}")
        names = [CIPHERS[c] for c in ciphers if CIPHERS[c]]
        if names:
            try:
                ctx.set_ciphers(":".join(names))
            except ssl.SSLError as e:
                raise _err(path, "tls_server_config.cipher_suites", f"OpenSSL refuses them: {e}") from e
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _err(path, "tls_server_config.prefer_server_cipher_suites", f"must be true or false, got {prefer!r}")
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key_file)
    except (OSError, ssl.SSLError) as e:
        raise _err(path, "tls_server_config.cert_file/key_file", f"cannot load the certificate or key "
                   f"({cert}, {key_file}): {e}") from e
    if auth != "NoClientCert":
        try:
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)
            if ca_text:
                ctx.load_verify_locations(cadata=ca_text)
        except (OSError, ssl.SSLError) as e:
            key = "client_ca_file" if ca_file else "client_ca"
            raise _err(path, f"tls_server_config.{key}", f"cannot load the client CA: {e}") from e
        ctx.verify_mode = CLIENT_AUTH[auth]
    files = tuple(p for p in (cert, key_file, ca_file) if p)
    return TlsSettings(ctx, tuple(sans or ()), files)


def _users(path: Path, users: dict) -> dict[str, bytes]:
    import bcrypt

    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user:
            raise _err(path, key, "user names must be non-empty strings")
        if ":" in user:
            raise _err(path, key, "a user name cannot contain ':' (basic auth splits on it)")
        if not isinstance(hashed, str) or not BCRYPT_RE.match(hashed.encode()):
            raise _err(path, key, "must be a bcrypt hash ($2y$10$ and 53 more characters; make one with "
                       "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError as e:
            raise _err(path, key, f"bcrypt cannot use this hash: {e}") from e
        out[user] = hashed.encode()
    return out


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    """A hash of the highest cost in use, so an unknown user takes as long as a known one with a wrong password."""
    import bcrypt

    cost = max((int(h[4:6]) for h in users.values()), default=4)
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def load(path: str | Path) -> WebConfig:
    """Read and validate the file; WebConfigError (naming the file and key) on anything exporter-toolkit refuses."""
    path = Path(path)
    try:
        raw = yamlfile.read(path, "web config") or {}
    except yamlfile.YamlFileError as e:
        raise WebConfigError(str(e)) from None
    if not isinstance(raw, dict):
        raise WebConfigError(f"web config {path}: expected a mapping at the top level")
    _known(path, "", raw, TOP_KEYS)
    cfg = WebConfig(path=path)
    tls = _mapping(path, "tls_server_config", raw.get("tls_server_config"))
    if tls:
        cfg.tls = _tls(path, tls)

    http = _mapping(path, "http_server_config", raw.get("http_server_config"))
    _known(path, "http_server_config.", http, HTTP_KEYS)
    if not isinstance(http.get("http2", True), bool):
        raise _err(path, "http_server_config.http2", "must be true or false")
    headers = _mapping(path, "http_server_config.headers", http.get("headers"))
    for name, value in headers.items():
        key = f"http_server_config.headers.{name}"
        if name not in HEADERS:
            raise _err(path, key, f"HTTP header {name!r} can not be configured (allowed: {', '.join(HEADERS)})")
        if not isinstance(value, str | int) or isinstance(value, bool) or "\n" in str(value) or "\r" in str(value):
            raise _err(path, key, f"must be a one-line string, got {value!r}")
        allowed = HEADERS[name]
        if str(value) == "":
            continue  # exporter-toolkit: unset if blank
        if allowed and str(value) not in allowed:
            raise _err(path, key, f"invalid value {value!r} (expected one of {', '.join(allowed)})")
        cfg.headers[name] = str(value)

    limit = _mapping(path, "rate_limit", raw.get("rate_limit"))
    _known(path, "rate_limit.", limit, ("interval", "burst"))
    if limit:
        try:
            interval = go_duration(limit.get("interval", 0))
        except ValueError as e:
            raise _err(path, "rate_limit.interval", str(e)) from None
        burst = limit.get("burst", 0)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
            raise _err(path, "rate_limit.burst", f"must be a whole number >= 0, got {burst!r}")
        if interval > 0 and burst < 1:
            raise _err(path, "rate_limit.burst", "must be at least 1 when interval is set (0 refuses every request)")
        if interval > 0:
            cfg.rate_limit = (interval, burst)

    users = _mapping(path, "basic_auth_users", raw.get("basic_auth_users"))
    cfg.users = _users(path, users)
    if cfg.users:
        cfg.dummy_hash = _dummy_hash(cfg.users)
    return cfg


def mtimes(files: tuple[Path, ...]) -> tuple[float, ...]:
    """Modification times of the TLS files (0 for a missing one), to notice a rotated certificate."""
    out = []
    for f in files:
        try:
            out.append(os.stat(f).st_mtime)
        except OSError:
            out.append(0.0)
    return tuple(out)
