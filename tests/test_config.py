"""Configuration: precedence, and errors that name the key and the expected form (exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.config import ConfigError, resolve
from tests.support.procs import REPO


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)


def test_flags_override_environment_which_overrides_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("interval: 7\nsimulated:\n  devices: 4\n  profile: idle\nlog:\n  format: json\n")
    s = resolve({"simulated.devices": "2"}, str(f), env={"GAUDI_EXPORTER_SIMULATED_DEVICES": "3",
                                                          "GAUDI_EXPORTER_INTERVAL": "9"})
    assert s["simulated.devices"] == 2
    assert s["interval"] == 9.0
    assert s["simulated.profile"] == "idle"
    assert s["log.format"] == "json"
    assert s["web.listen_address"] == ":9654"
    assert s.section("simulated") == {"devices": 2, "profile": "idle", "seed": 0, "model": "HL-325L"}


@pytest.mark.parametrize("text, needle", [
    ("pricing:\n  statc:\n    usd_per_hour: 3\n", "unknown key 'pricing.statc'"),
    ("interval: fast\n", "interval must be a number"),
    ("simulated:\n  devices: 0\n", "simulated.devices must be an integer >= 1"),
    ("backend: cuda\n", "backend must be one of auto, hlml, hlsmi, simulated"),
    ("collectors:\n  hpu: maybe\n", "collectors.hpu must be true or false"),
    ("- just\n- a list\n", "expected a mapping"),
    ("interval: [\n", "not valid YAML"),
])
def test_bad_config_files_name_the_key(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        resolve({}, str(f), env={})
    assert needle in str(e.value)
    r = run_cli("check-config", str(f))
    assert r.returncode == 2
    assert needle in r.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text("backend: simulated\npricing:\n  source: static\n  static:\n    usd_per_hour: 19.92\n"
                 "collectors:\n  kubernetes: true\n")
    r = run_cli("check-config", str(f))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--interval", "soon"], "--interval"),
    (["--backend", "cuda"], "--backend"),
    (["--simulated.devices", "-1", "--backend", "simulated"], "simulated.devices must be an integer >= 1"),
    (["--web.listen-address", "nowhere", "--backend", "simulated"], "--web.listen-address"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_flags_exit_2_with_a_message(args, needle):
    r = run_cli(*args, env={"AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="GAUDI_EXPORTER_INTERVAL"):
        resolve({}, None, env={"GAUDI_EXPORTER_INTERVAL": "often"})


def test_help_lists_every_flag_and_the_collectors():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--web.listen-address", "--web.telemetry-path", "--backend", "--simulated.devices",
                 "--simulated.profile", "--simulated.seed", "--hlsmi.path", "--interval", "--config",
                 "--log.level", "--log.format", "--version", "--collector.hpu", "--no-collector.hpu",
                 "--web.config.file", "--pricing.source", "--mode"):
        assert flag in r.stdout, flag


def test_auto_backend_without_hardware_exits_with_advice(tmp_path):
    r = run_cli("--backend", "auto", "--hlsmi.path", str(tmp_path / "no-hl-smi"),
                env={"AWS_EC2_METADATA_DISABLED": "true", "PATH": str(tmp_path)})
    assert r.returncode == 1
    assert "hlml" in r.stderr and "hl-smi" in r.stderr and "--backend simulated" in r.stderr
