"""The docs say what the code does: the metric reference and the flag table are generated, and kept current."""

from __future__ import annotations

import re

from exporter.docs import metrics_markdown, options_markdown
from tests.support.procs import REPO

BEGIN, END = "<!-- flags:begin", "<!-- flags:end -->"


def flags_section(readme: str) -> str:
    start = readme.index("\n", readme.index(BEGIN)) + 1
    return readme[start:readme.index(END)]


def test_metrics_reference_is_current():
    assert (REPO / "docs" / "metrics.md").read_text() == metrics_markdown(), \
        "run: gaudi-exporter metrics --format markdown > docs/metrics.md"


def test_readme_lists_every_flag():
    assert flags_section((REPO / "README.md").read_text()) == options_markdown(), \
        "run: python -m exporter.docs to refresh the README's flag table"


def test_readme_links_exist():
    readme = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|alerts|dashboards|deploy)/[^)#]+)\)", readme):
        assert (REPO / link).exists(), link
