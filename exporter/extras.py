"""Optional dependencies: which pip extra provides which import, and the one-line error when one is missing.

The base install runs the daemon with the simulated and hl-smi backends and static or on-prem prices. Everything
else comes with an extra of pyproject.toml; ``all`` holds every extra but ``training`` (torch, which only a
training process needs). A feature asks ``require(extra, what)`` before it imports, so a missing package is a
:class:`MissingExtra` (a ConfigError: exit 2, found by ``check-config`` too) naming the setting or command and the
install line, never a traceback.
"""

from __future__ import annotations

import importlib.util

from exporter.config import ConfigError

# extra -> (import names it must provide, pip distributions it installs)
EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hlml": (("pyhlml",), ("habana-pyhlml",)),
    "aws": (("boto3",), ("boto3",)),
    "kubernetes": (("grpc", "google.protobuf"), ("grpcio", "protobuf")),
    "dashboards": (("grafanalib", "matplotlib", "requests"), ("grafanalib", "matplotlib", "requests")),
    "advisor": (("requests", "matplotlib"), ("requests", "matplotlib")),
    "training": (("torch",), ("torch",)),
}
ALL = "all"  # the extra that installs every one of EXTRAS except training


class MissingExtra(ConfigError):
    pass


def importable(name: str) -> bool:
    """True if ``import name`` would find the module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def missing(extra: str) -> list[str]:
    """The import names of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra][0] if not importable(m)]


def install_hint(extra: str) -> str:
    also = "" if extra == "training" else f", or '.[{ALL}]' for every command"
    return f"pip install '.[{extra}]' in a clone of the repository{also}"


def require(extra: str, what: str) -> None:
    """Raise MissingExtra naming ``what`` (a setting or a command) if the extra's packages are not installed."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(f"{what} needs the '{extra}' extra ({', '.join(EXTRAS[extra][1])}; missing: "
                           f"{', '.join(gone)}): {install_hint(extra)}")


def extra_of_module(name: str | None) -> str | None:
    """The extra that provides the module ``name`` (e.g. from ImportError.name), if any."""
    if not name:
        return None
    for extra, (modules, _) in EXTRAS.items():
        if any(name == m or name.startswith(m + ".") or m.startswith(name + ".") for m in modules):
            return extra
    return None
