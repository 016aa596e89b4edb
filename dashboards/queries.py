"""Turn a panel's PromQL into what Grafana would send: template variables and built-in intervals substituted.

The live test and the renderer both use this, so a picture and a test see the same query a user would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dashboards.panels import Board

# Grafana's "All" for our variables is the allValue ".*".
ALL = ".*"


@dataclass(frozen=True)
class Target:
    board: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref: str
    expr: str
    legend: str
    instant: bool
    needs: frozenset[str]


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def expand(expr: str, values: Mapping[str, str] | None = None, *, range_s: int = 300,
           rate_interval: str = "1m", interval_s: int = 15) -> str:
    """Substitute $__rate_interval, $__range(_s), $__interval and $var / ${var} (default: All)."""
    values = values or {}
    out = (expr.replace("$__rate_interval", rate_interval)
           .replace("$__range_s", str(range_s))
           .replace("$__range_ms", str(range_s * 1000))
           .replace("$__range", _duration(range_s))
           .replace("$__interval_ms", str(interval_s * 1000))
           .replace("$__interval", _duration(interval_s)))

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, ALL)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", var, out)


def panel_targets(board: Board) -> Iterator[Target]:
    for p in board.json["panels"]:
        for t in p.get("targets", []):
            yield Target(board.uid, p["id"], p["title"], p["type"], t["refId"], t["expr"],
                         t.get("legendFormat", ""), bool(t.get("instant")),
                         board.target_needs.get((p["id"], t["refId"]), frozenset()))


def variable_queries(board: Board) -> Iterator[tuple[str, str]]:
    """(variable name, label_values(...) query) for every query variable."""
    for v in board.json["templating"]["list"]:
        if v["type"] == "query":
            yield v["name"], v["definition"]


_LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?(\w+)\)$", re.S)


def label_values_as_promql(query: str) -> tuple[str, str]:
    """label_values(metric{sel}, label) -> ("group by (label) (metric{sel})", label) for the query API."""
    m = _LABEL_VALUES.match(query.strip())
    if not m or not m.group(1):
        raise ValueError(f"not a label_values(series, label) query: {query!r}")
    return f"group by ({m.group(2)}) ({m.group(1)})", m.group(2)


def annotation_exprs(board: Board) -> Iterator[tuple[str, str, frozenset[str]]]:
    for a in board.json["annotations"]["list"]:
        if "expr" in a:
            yield a["name"], a["expr"], board.annotation_needs.get(a["name"], frozenset())


def legend(fmt: str, labels: Mapping[str, Any]) -> str:
    """Grafana's {{label}} legend templating."""
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return inner or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(labels.get(m.group(1), "")), fmt).strip()


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label names, functions, strings and durations left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery windows
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # grouping labels
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names
