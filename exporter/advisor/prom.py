"""A tiny client for the Prometheus HTTP API (instant queries, raw samples), with clear errors."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests

from exporter.argparser import Parser

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PromError(RuntimeError):
    """Prometheus could not be reached or rejected the query; the message names the URL and the query."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h', '2d', '1w' (a single unit, as Prometheus writes them) -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use a number and one of ms, s, m, h, d, w (e.g. 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time(text: str, now: float | None = None) -> float:
    """'now', 'now-2h', a unix time, or an RFC 3339 time -> unix seconds."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - parse_duration(text[4:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: use now, now-1h, a unix time or RFC 3339") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quote(value: str) -> str:
    """A PromQL string literal."""
    return json.dumps(value)


class Prometheus:
    def __init__(self, base_url: str, *, session: requests.Session | None = None, timeout: float = 30.0) -> None:
        if not re.match(r"^https?://", base_url):
            raise ValueError(f"--prometheus must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> dict:
        url = self.base_url + path
        what = params.get("query", "")
        try:
            r = self.session.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as e:
            raise PromError(f"Prometheus at {self.base_url} unreachable: {e}") from e
        try:
            body = r.json()
        except ValueError:
            raise PromError(f"Prometheus at {url} answered HTTP {r.status_code} without JSON for {what!r}") from None
        if body.get("status") != "success":
            raise PromError(f"Prometheus rejected {what!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """Instant query; vectors give one point per series, matrices (range selectors) all raw samples."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        kind = data.get("resultType")
        if kind == "scalar":
            t, v = data["result"]
            return [Series({}, [(float(t), float(v))])]
        out = []
        for item in data.get("result", []):
            if kind == "vector":
                t, v = item["value"]
                pts = [(float(t), float(v))]
            else:
                pts = [(float(t), float(v)) for t, v in item.get("values", [])]
            out.append(Series(dict(item.get("metric", {})), pts))
        return out

    def raw(self, selector: str, start: float, end: float) -> list[Series]:
        """Every scraped sample of ``selector`` in (start, end], with its scrape timestamp."""
        window = max(1, int(round(end - start)))
        return self.query(f"{selector}[{window}s]", at=end)


def main(argv: list[str]) -> int:
    """`python -m exporter.advisor.prom --prometheus URL EXPR`: run one query, print JSON (for debugging)."""
    p = Parser(prog="gaudi-exporter advise query", description=main.__doc__)
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--time", default=None, help="evaluation time (now, now-1h, unix, RFC 3339)")
    p.add_argument("expr")
    a = p.parse_args(argv)
    try:
        at = parse_time(a.time) if a.time else None
        result = Prometheus(a.prometheus).query(a.expr, at)
    except (ValueError, PromError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps([{"labels": s.labels, "points": s.points} for s in result], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
