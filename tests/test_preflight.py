"""One validation path: whatever makes the daemon refuse its settings, check-config finds first; both exit 2 with
the file and the key named, and no traceback, whatever the file holds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.docs import config_yaml
from tests.support.procs import REPO

ENV = {"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"}


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=cwd, capture_output=True, timeout=60,
                          text=True, env={**ENV, "PYTHONPATH": str(REPO)})


WEB_BAD_CERT = "tls_server_config:\n  cert_file: 123\n  key_file: key.pem\n"

# (config file text, web config text or None, what the message must name)
BAD = {
    "on_prem without hardware_usd": ("pricing:\n  source: on_prem\n", None, "pricing.on_prem.hardware_usd"),
    "unknown built-in price": ("pricing:\n  static:\n    entry: gaudi9-imaginary\n", None, "pricing.static.entry"),
    "missing web config file": ("web:\n  config:\n    file: nowhere/web.yml\n", None, "nowhere/web.yml"),
    "non-string cert_file": ("web:\n  config:\n    file: web.yml\n", WEB_BAD_CERT, "tls_server_config.cert_file"),
    "web config not UTF-8": ("web:\n  config:\n    file: web.yml\n", b"basic_auth_users:\n  a: \xff\xfe\n",
                             "not UTF-8"),
    "web config nested deeply": ("web:\n  config:\n    file: web.yml\n", "a: " + "[" * 3000 + "]" * 3000,
                                 "nested too deeply"),
    "config not UTF-8": (b"interval: 5\nbackend: \xc3\x28\n", None, "not UTF-8"),
    "config nested deeply": ("interval: " + "[" * 3000 + "]" * 3000 + "\n", None, "nested too deeply"),
    "config mapping nested deeply": ("pricing: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", None,
                                     "nested too deeply"),
    "market source not a file": ("mode: market\nmarket:\n  source: nowhere.json\n", None, "market.source"),
}


def _write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("name", BAD)
def test_check_config_and_start_up_refuse_the_same_files_with_exit_2(tmp_path, name):
    config, web, needle = BAD[name]
    _write(tmp_path / "c.yaml", config)
    if web is not None:
        _write(tmp_path / "web.yml", web)
    checked = run_cli("check-config", "c.yaml", cwd=tmp_path)
    started = run_cli("--config", "c.yaml", "--backend", "simulated", "--web.listen-address", "127.0.0.1:0",
                      cwd=tmp_path)
    for r in (checked, started):
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert needle in r.stderr, r.stderr
        assert "c.yaml" in r.stderr or "web.yml" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_every_key_at_its_default_is_a_file_check_config_accepts(tmp_path):
    """The YAML docs/configuration.md shows is valid as it stands."""
    (tmp_path / "all.yaml").write_text(config_yaml())
    r = run_cli("check-config", "all.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "0 settings differ from the defaults" in r.stdout
