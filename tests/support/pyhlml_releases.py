"""The habana-pyhlml releases the tests run against: the one installed in the venv (the newest pyproject.toml
allows) and the lowest it allows, installed by scripts/test.sh with ``pip install --target .venv/pyhlml-lowest``.

pyhlml looks itself up in sys.modules at call time (ErrorsAsClass, _wrapperInit), so a release is swapped in as a
whole set of sys.modules entries for the duration of a test, then the previous set is put back.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
LOWEST_DIR = REPO / ".venv" / "pyhlml-lowest"
RELEASES = ("highest", "lowest")


def allowed_range() -> tuple[str, str]:
    """pyproject.toml's ``habana-pyhlml>=LOW,<HIGH`` bounds."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    spec = next(d for d in extras["hlml"] if d.startswith("habana-pyhlml"))
    m = re.fullmatch(r"habana-pyhlml>=([\d.]+),<([\d.]+)", spec.replace(" ", ""))
    assert m, f"unexpected habana-pyhlml requirement {spec!r}"
    return m.group(1), m.group(2)


def directory(release: str) -> Path | None:
    """Where the release is imported from (None: the venv's site-packages)."""
    return LOWEST_DIR if release == "lowest" else None


def version(release: str) -> str | None:
    """The installed version of the release, or None if it is not installed here."""
    if release == "lowest":
        dists = list(importlib.metadata.distributions(name="habana-pyhlml", path=[str(LOWEST_DIR)]))
        return dists[0].version if dists else None
    try:
        return importlib.metadata.version("habana-pyhlml")
    except importlib.metadata.PackageNotFoundError:
        return None


def _pyhlml_modules() -> dict[str, ModuleType]:
    return {k: v for k, v in sys.modules.items() if k == "pyhlml" or k.startswith("pyhlml.")}


@contextlib.contextmanager
def imported(release: str) -> Iterator[ModuleType]:
    """``import pyhlml`` of the given release, undone on exit."""
    saved = _pyhlml_modules()
    for k in saved:
        del sys.modules[k]
    where = directory(release)
    if where is not None:
        sys.path.insert(0, str(where))
    try:
        mod = importlib.import_module("pyhlml")
        importlib.import_module("pyhlml.hlml_lib")
        yield mod
    finally:
        if where is not None:
            sys.path.remove(str(where))
        for k in _pyhlml_modules():
            del sys.modules[k]
        sys.modules.update(saved)
