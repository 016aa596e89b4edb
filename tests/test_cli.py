"""The command line as a new user meets it: short errors with a suggestion, no flag prefixes, optional packages
named when missing, build commands that write where they are run, one install line for every command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from exporter import cli, extras
from tests.support.procs import REPO

# every parser a user can reach: (argv prefix, arguments that satisfy its required ones)
COMMANDS = [((), ()), (("check-config",), ("x.yaml",)), (("metrics",), ())] + [
    ((cmd, verb), ()) for cmd, verbs in cli.SUBCOMMANDS.items() for verb in verbs]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def long_flags(help_text: str) -> list[str]:
    return sorted({f for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]", help_text)
                   if f not in ("--help", "--version") and not f.startswith("--no-")})


def _flag_to_mistype(capsys, prefix: tuple[str, ...]) -> str:
    code, out, _ = run_main(capsys, *prefix, "--help")
    assert code == 0
    flags = long_flags(out) or ["--help"]  # check-config has no flag of its own
    return max(flags, key=len)  # the longest: a prefix of it is unambiguous and long enough to look right


@pytest.mark.parametrize("prefix, required", COMMANDS, ids=lambda v: " ".join(v) or "daemon")
def test_a_mistyped_flag_gets_a_suggestion_and_a_pointer_to_help_not_the_usage(capsys, prefix, required):
    flag = _flag_to_mistype(capsys, prefix)
    typo = flag[:-1] + "x" + flag[-1]  # one letter too many
    code, _, err = run_main(capsys, *prefix, typo, "1", *required)
    assert code == 2, err
    assert f"did you mean {flag}?" in err, err
    assert "--help" in err.splitlines()[-1]
    assert "usage:" not in err and len(err.splitlines()) <= 4, err


@pytest.mark.parametrize("prefix, required", COMMANDS, ids=lambda v: " ".join(v) or "daemon")
def test_a_prefix_of_a_flag_is_refused(capsys, prefix, required):
    flag = _flag_to_mistype(capsys, prefix)
    short = flag[:max(len(flag) - 3, 3)]
    code, _, err = run_main(capsys, *prefix, short, "1", *required)
    assert code == 2, f"{short} was taken for {flag}"
    assert f"did you mean {flag}?" in err, err


def test_the_daemon_refuses_the_prefix_the_issue_shows(capsys):
    code, _, err = run_main(capsys, "--backend", "simulated", "--pricing.static.usd", "3")
    assert code == 2
    assert "did you mean --pricing.static.usd-per-hour?" in err


def test_a_mistyped_command_or_verb_is_named_with_a_suggestion(capsys):
    code, _, err = run_main(capsys, "chek-config", "x.yaml")
    assert code == 2 and "did you mean check-config?" in err and len(err.splitlines()) <= 2
    code, _, err = run_main(capsys, "rules", "biuld")
    assert code == 2 and "did you mean build?" in err


# ------------------------------------------------------------------------------------- optional dependencies

def run_without(modules: list[str], argv: list[str], cwd=REPO) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where ``modules`` cannot be imported, as after a plain ``pip install .``."""
    code = ("import sys\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            "from exporter.cli import main\n"
            f"raise SystemExit(main({argv!r}))\n")
    env = {"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env)


def assert_one_line_naming(r: subprocess.CompletedProcess, extra: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert f"'{extra}' extra" in lines[0] and f"pip install '.[{extra}]'" in lines[0], lines[0]


def test_the_readme_config_without_grpc_is_refused_by_check_config_and_at_start(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("backend: simulated\npricing:\n  static:\n    usd_per_hour: 19.92\ncollectors:\n  kubernetes: true\n")
    r = run_without(["grpc"], ["check-config", str(f)])
    assert_one_line_naming(r, "kubernetes")
    assert "collectors.kubernetes" in r.stderr
    r = run_without(["grpc"], ["--config", str(f), "--web.listen-address", "127.0.0.1:0"])
    assert_one_line_naming(r, "kubernetes")


@pytest.mark.parametrize("settings, module, extra", [
    ("pricing:\n  source: aws\n", "boto3", "aws"),
    ("backend: hlml\npricing:\n  static:\n    usd_per_hour: 1\n", "pyhlml", "hlml"),
    ("mode: market\n", "boto3", "aws"),
])
def test_each_optional_feature_names_its_extra_when_missing(tmp_path, settings, module, extra):
    f = tmp_path / "c.yaml"
    f.write_text(settings)
    assert_one_line_naming(run_without([module], ["check-config", str(f)]), extra)
    assert_one_line_naming(run_without([module], ["--config", str(f), "--web.listen-address", "127.0.0.1:0"]),
                           extra)


@pytest.mark.parametrize("argv, module, extra", [
    (["dashboards", "build", "--check"], "grafanalib", "dashboards"),
    (["dashboards", "render", "http://127.0.0.1:9"], "matplotlib", "dashboards"),
    (["advise", "batch-size", "--prometheus", "http://127.0.0.1:9", "--job", "j"], "requests", "advisor"),
    (["advise", "precision", "--prometheus", "http://127.0.0.1:9", "--job", "j"], "requests", "advisor"),
    (["report", "run", "--prometheus", "http://127.0.0.1:9", "--job", "j"], "requests", "advisor"),
    (["report", "regions"], "boto3", "aws"),
])
def test_each_command_names_its_extra_when_missing(argv, module, extra):
    assert_one_line_naming(run_without([module], argv), extra)


def test_the_all_extra_installs_what_every_command_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, (_, dists) in extras.EXTRAS.items():
        names = {re.split(r"[<>=\[ ]", d)[0] for d in optional[extra]}
        assert set(dists) <= names, f"pyproject extra {extra} lacks {set(dists) - names}"
    assert extras.ALL in optional, "no 'all' extra: the README's commands need several installs"
    (all_line,) = optional[extras.ALL]
    wanted = set(extras.EXTRAS) - {"training"}
    assert set(all_line.split("[", 1)[1].rstrip("]").split(",")) == wanted
    assert f"pip install '.[{extras.ALL}]'" in (REPO / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- build outputs

def _tree_mtimes(*dirs) -> dict:
    return {p: p.stat().st_mtime_ns for d in dirs for p in (REPO / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_build_commands_write_under_the_current_directory_only(tmp_path):
    before = _tree_mtimes("alerts", "dashboards", "deploy")
    for argv in (["rules", "build"], ["dashboards", "build"]):
        r = run_without([], argv, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert _tree_mtimes("alerts", "dashboards", "deploy") == before, "a build wrote into the package's directory"
    assert sorted(p.name for p in (tmp_path / "alerts" / "build").glob("*.yaml")) == [
        "prometheus_alerts.yaml", "prometheus_rules.yaml"]
    assert (tmp_path / "deploy/kubernetes/base/generated/prometheusrule.yaml").exists()
    assert sorted(p.name for p in (tmp_path / "dashboards" / "build").glob("*.json")) == sorted(
        p.name for p in (REPO / "dashboards" / "build").glob("*.json"))
    # what a clone's root gets is the committed files, byte for byte
    for rel in ("alerts/build/prometheus_alerts.yaml", "deploy/kubernetes/base/generated/prometheusrule.yaml",
                "dashboards/build/gaudi-cost.json", "dashboards/build/provisioning/gaudi-exporter.yaml"):
        assert (tmp_path / rel).read_bytes() == (REPO / rel).read_bytes(), rel


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_rules_build_out_keeps_the_prometheusrule_apart_from_the_rule_files(tmp_path):
    out = tmp_path / "rules"
    r = run_without([], ["rules", "build", "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rule_files = sorted(str(p) for p in out.glob("*.yaml"))
    assert len(rule_files) == 2
    check = subprocess.run(["promtool", "check", "rules", *rule_files], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    (pr,) = (out / "kubernetes").glob("*.yaml")
    assert yaml.safe_load(pr.read_text())["kind"] == "PrometheusRule"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "prometheus_alerts.yaml", "prometheus_rules.yaml", "prometheusrule.yaml"]
