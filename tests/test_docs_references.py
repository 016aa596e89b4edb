"""What the docs name exists: every file, flag and command in README.md and docs/*.md, and the generated
docs/configuration.md that `--help` cites is current."""

from __future__ import annotations

import contextlib
import io
import re
from functools import cache

import pytest

from exporter import cli
from exporter.docs import configuration_markdown
from exporter.pricing.on_prem import HOURS_PER_YEAR
from tests.support.procs import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = {p.name for p in REPO.iterdir()} - {".git", ".venv"}
# tools whose own flags the docs quote: a flag on their line is theirs, not ours
FOREIGN = ("promtool", "amtool", "kubectl", "pip", "curl", "aws ", "eksctl", "helm", "hl-smi", "buildah", "htpasswd",
           "pytest", "python -m venv", "docker", "podman", "openssl", "git ", "apt", "systemctl", "tr ", "grep",
           "ruff", "yamllint", "hadolint", "vmalert", "vmagent", "prometheus", "alertmanager", "torchrun",
           "deepspeed", "python -m grpc_tools", "jq")
FOREIGN_FLAGS = {"--isolation", "--set",  # buildah's and helm's, quoted in passing
                 "--query.max-samples", "--query.replica-label",  # Prometheus' and Thanos Query's, in the runbook
                 "--retention.resolution-raw"}  # Thanos compactor's, in deploy.md


def code_texts(text: str) -> list[str]:
    """Fenced block lines and inline code spans: where the docs name files, flags and commands."""
    out: list[str] = []
    fenced = False
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if line.strip().startswith("#"):
                continue
            line = pending + line.split(" #", 1)[0].strip()
            if line.endswith("\\"):  # a shell continuation: one command
                pending = line[:-1] + " "
                continue
            pending = ""
            out.append(line)
        else:
            out += re.findall(r"`([^`]+)`", line)
    return out


@cache
def help_flags(*prefix: str) -> frozenset[str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        cli.main([*prefix, "--help"])
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]", buf.getvalue()))


@cache
def stack_flags() -> frozenset[str]:
    """The flags of the local stacks: the demo (stack.py) and the global view (global_stack.py)."""
    texts = [(REPO / "deploy" / "local" / script).read_text() for script in ("stack.py", "global_stack.py")]
    return frozenset(f for text in texts for f in re.findall(r"add_argument\(\"(--[a-z-]+)\"", text))


def all_flags() -> frozenset[str]:
    flags = set(help_flags()) | set(stack_flags()) | set(help_flags("metrics"))
    for cmd, verbs in cli.SUBCOMMANDS.items():
        for verb in verbs:
            flags |= help_flags(cmd, verb)
    return frozenset(flags)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


def problems_in(doc) -> list[str]:
    found: list[str] = []
    rel = doc.relative_to(REPO)
    text = doc.read_text()
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):  # markdown links, relative to the doc
        if "://" not in link and not link.startswith("mailto:") and not (doc.parent / link).exists():
            found.append(f"{rel}: link {link} does not exist")
    for snippet in code_texts(text):
        for path in re.findall(r"(?<![\w./~$-])((?:[\w.-]+/)+[\w.*-]*[\w*])", snippet):
            if path.split("/")[0] in TOP and not list(REPO.glob(path.rstrip("/"))):
                found.append(f"{rel}: file {path} does not exist")
        for m in re.finditer(r"gaudi-exporter ([a-z][\w-]*)(?: ([a-z][\w|-]*))?", snippet):
            cmd, verb = m.group(1), m.group(2)
            if cmd in cli.SUBCOMMANDS:
                for v in (verb or "").split("|"):
                    if v and v not in cli.SUBCOMMANDS[cmd]:
                        found.append(f"{rel}: command gaudi-exporter {cmd} {v} does not exist")
            elif cmd not in cli.COMMANDS and not snippet.startswith(("pip", "kubectl", "helm")) and \
                    "gaudi-exporter-" not in m.group(0) and cmd not in ("pod", "container", "namespace"):
                found.append(f"{rel}: command gaudi-exporter {cmd} does not exist")
        for target in re.findall(r"(?<![\w-])make ([a-z][a-z-]*)", snippet):
            if target not in makefile_targets():
                found.append(f"{rel}: make target {target} does not exist")
        for module in re.findall(r"python3? -m ([a-z_][\w.]*)", snippet):
            top = module.split(".")[0]
            if top in ("pytest", "venv", "pip", "grpc_tools", "torch", "http"):
                continue
            if not (REPO / (module.replace(".", "/") + ".py")).exists() and \
                    not (REPO / module.replace(".", "/") / "__main__.py").exists():
                found.append(f"{rel}: module {module} does not exist")
        line = snippet.strip()
        if any(line.startswith(t) or f"| {t}" in line or f"&& {t}" in line for t in FOREIGN):
            continue
        flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]", line)
        m = re.search(r"gaudi-exporter ([a-z][\w-]*) ([a-z][\w-]*)", line)
        if m and m.group(1) in cli.SUBCOMMANDS and m.group(2) in cli.SUBCOMMANDS[m.group(1)]:
            known = help_flags(m.group(1), m.group(2))
        elif "stack.py" in line:
            known = stack_flags()
        else:
            known = all_flags()
        names = {k.removeprefix("--") for k in known}
        for flag in flags:
            if flag not in FOREIGN_FLAGS and flag[2:] not in names and flag.removeprefix("--no-") not in names:
                found.append(f"{rel}: flag {flag} does not exist (in: {line[:80]})")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_flag_and_command_the_docs_name_exists(doc):
    problems = problems_in(doc)
    assert problems == [], "\n".join(problems)


def test_configuration_reference_is_current():
    """`gaudi-exporter --help` cites docs/configuration.md: it exists and is what the options say."""
    assert "docs/configuration.md" in cli.build_parser().format_help()
    assert (REPO / "docs" / "configuration.md").read_text() == configuration_markdown(), \
        "run: python -m exporter.docs to refresh docs/configuration.md"


def test_the_docs_state_the_amortisation_hours_the_code_uses():
    hours = {int(h) for doc in DOCS for h in re.findall(r"(\d{4}) h\b", doc.read_text())
             if 8700 < int(h) < 8800}
    assert hours == {int(HOURS_PER_YEAR)}, f"docs say {sorted(hours)} hours a year, the code {HOURS_PER_YEAR:g}"


def test_install_lines_work_from_a_clone():
    """The package is on no index: `pip install 'gaudi-exporter[x]'` cannot work, `pip install '.[x]'` does."""
    for doc in DOCS:
        assert "gaudi-exporter[" not in doc.read_text(), f"{doc.name}: say pip install '.[extra]'"
