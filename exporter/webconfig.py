"""``--web.config.file``: TLS and basic auth in the exporter-toolkit's YAML format, as Prometheus users know it.

Supported keys: tls_server_config.{cert_file, key_file, client_ca_file, client_auth_type, min_version} and
basic_auth_users (user -> bcrypt hash). Anything else is an error that names the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from exporter import yamlfile

TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
MIN_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL}


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _cache: dict[bytes, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, password: str) -> bool:
        """bcrypt is slow on purpose; remember verdicts by a keyed digest so a scrape costs a hash lookup."""
        hashed = self.users.get(user)
        if hashed is None:
            return False
        key = hmac.new(hashed, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        import bcrypt

        ok = bcrypt.checkpw(password.encode(), hashed)
        with self._lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = ok
        return ok


def load(path: str | Path) -> WebConfig:
    path = Path(path)
    try:
        raw = yamlfile.read(path, "web config") or {}
    except yamlfile.YamlFileError as e:
        raise WebConfigError(str(e)) from None
    if not isinstance(raw, dict):
        raise WebConfigError(f"web config {path}: expected a mapping at the top level")
    for key in raw:
        if key not in TOP_KEYS:
            raise WebConfigError(f"web config {path}: unknown key {key!r} (expected one of {sorted(TOP_KEYS)})")
    cfg = WebConfig()
    tls = raw.get("tls_server_config")
    if tls:
        if not isinstance(tls, dict):
            raise WebConfigError(f"web config {path}: tls_server_config must be a mapping")
        for key in tls:
            if key not in TLS_KEYS:
                raise WebConfigError(f"web config {path}: unknown key tls_server_config.{key}")
        for key in ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version"):
            if key in tls and not isinstance(tls[key], str):
                raise WebConfigError(f"web config {path}: tls_server_config.{key} must be a string, got "
                                     f"{tls[key]!r}")
        base = path.parent
        try:
            cert = base / tls["cert_file"]
            key_file = base / tls["key_file"]
        except KeyError as e:
            raise WebConfigError(f"web config {path}: tls_server_config.{e.args[0]} is required") from e
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = MIN_VERSIONS.get(tls.get("min_version", "TLS12"), ssl.TLSVersion.TLSv1_2)
        try:
            ctx.load_cert_chain(cert, key_file)
            if tls.get("client_ca_file"):
                ctx.load_verify_locations(base / tls["client_ca_file"])
                ctx.verify_mode = CLIENT_AUTH.get(tls.get("client_auth_type", "RequireAndVerifyClientCert"),
                                                  ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"web config {path}: cannot load the certificate or key: {e}") from e
        cfg.ssl_context = ctx
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"web config {path}: basic_auth_users.{user} must be a bcrypt hash ($2b$...)")
        cfg.users[str(user)] = hashed.encode()
    return cfg
