"""What a training job did, read back from Prometheus: its phases, their throughput and its nodes' cost.

Throughput: consecutive scrapes of gaudi_training_samples_total from one training target are attributed to
a phase when the same scrape (same timestamp) of gaudi_training_info shows the same settings at both ends;
pairs across a phase change, and pairs in which no sample was counted (startup, evaluation, a hang), are
dropped. Cost: the training target is joined to the node exporter target(s) of the node it ran on (by the
``node`` label when both carry one, else by the host part of ``instance``, or by an explicit selector), and
the node cost counter is integrated over exactly the phase's intervals.

Rates are integrals over time, never sums of per-target rates: a pod restarted mid-phase is a new target that ran
after the old one, not beside it, and a job that moved node paid one node, then the other. So a phase's throughput
is its samples over its wall time (the union of its targets' intervals), and its cost rate is the cost of each node
while the job ran on it, over the same wall time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

from exporter import catalogue
from exporter.advisor.prom import Prometheus, Series, quote

INFO = catalogue.get("gaudi_training_info").name
SAMPLES = catalogue.get("gaudi_training_samples_total").name
TOKENS = catalogue.get("gaudi_training_tokens_total").name  # fetched for the report's totals
NODE_COST = catalogue.get("gaudi_node_cost_usd_total").name
SETTINGS = ("batch_size", "precision", "model")
JOB_LABELS = ("job", "exported_job")  # exported_job: Prometheus renamed the metric's job (honor_labels false)

Target = tuple[tuple[str, str], ...]


class AdvisorError(RuntimeError):
    """Not enough data to answer honestly; the message says what is missing. Exit code 2."""


def target_of(labels: dict[str, str]) -> Target:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__" and k not in SETTINGS))


def instance_host(instance: str) -> str:
    if instance.startswith("["):
        return instance[1: instance.index("]")]
    return instance.rsplit(":", 1)[0] if instance.count(":") == 1 else instance


def monotonic(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A counter with resets removed (each reset continues from the value before it)."""
    out, offset, prev = [], 0.0, None
    for t, v in points:
        if prev is not None and v < prev:
            offset += prev
        out.append((t, v + offset))
        prev = v
    return out


def increase(points: list[tuple[float, float]]) -> float:
    m = monotonic(points)
    return m[-1][1] - m[0][1] if len(m) > 1 else 0.0


def value_at(points: list[tuple[float, float]], t: float) -> float | None:
    """Linear interpolation of a (monotonic) counter at ``t``; None outside the scraped span."""
    if not points or t < points[0][0] or t > points[-1][0]:
        return None
    for (t0, v0), (t1, v1) in pairwise(points):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def merge(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(windows):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered(windows: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the windows."""
    return sum(b - a for a, b in merge(windows))


@dataclass
class TargetStats:
    samples: float = 0.0
    seconds: float = 0.0
    intervals: int = 0
    windows: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Phase:
    """All scrape intervals in which the compared setting had one value."""

    key: str
    targets: dict[Target, TargetStats] = field(default_factory=dict)
    settings: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    cost_usd: float = 0.0
    usd_per_second: float | None = None

    @property
    def samples(self) -> float:
        return sum(s.samples for s in self.targets.values())

    @property
    def windows(self) -> list[tuple[float, float]]:
        return merge([w for s in self.targets.values() for w in s.windows])

    @property
    def seconds(self) -> float:
        """Wall time observed: the union of all targets' intervals (concurrent ones overlap, successive add up)."""
        return covered(self.windows)

    @property
    def points(self) -> int:
        """Scrape intervals observed over the phase's wall time: successive targets (a restart) add up,
        concurrent ones (several pods) count once."""
        seconds = sum(s.seconds for s in self.targets.values())
        intervals = sum(s.intervals for s in self.targets.values())
        return round(intervals * self.seconds / seconds) if seconds > 0 else 0

    @property
    def samples_per_second(self) -> float:
        seconds = self.seconds
        return self.samples / seconds if seconds > 0 else 0.0

    @property
    def usd_per_sample(self) -> float | None:
        sps = self.samples_per_second
        if self.usd_per_second is None or sps <= 0:
            return None
        return self.usd_per_second / sps


def split_phases(samples: list[Series], info: list[Series], label: str | None) -> dict[str, Phase]:
    """Group consecutive scrape pairs by the value of the info label ``label`` (None: by all settings)."""
    if label is not None and label not in SETTINGS:
        raise ValueError(f"unknown setting {label!r}; one of {', '.join(SETTINGS)}")
    info_at: dict[Target, dict[float, tuple[tuple[str, str], ...]]] = defaultdict(dict)
    for s in info:
        tgt = target_of(s.labels)
        settings = tuple((k, s.labels.get(k, "")) for k in SETTINGS)
        for t, v in s.points:
            if v == 1:
                info_at[tgt][t] = settings
    phases: dict[str, Phase] = {}
    for s in samples:
        tgt = target_of(s.labels)
        at = info_at.get(tgt, {})
        for (t0, v0), (t1, v1) in pairwise(s.points):
            a, b = at.get(t0), at.get(t1)
            if a is None or a != b or t1 <= t0 or v1 == v0:
                continue  # unknown or changed settings, or no sample counted (startup, evaluation, a hang)
            key = dict(a)[label] if label else ", ".join(f"{k}={v}" for k, v in a)
            ph = phases.setdefault(key, Phase(key))
            ph.settings.add(a)
            st = ph.targets.setdefault(tgt, TargetStats())
            st.samples += v1 - v0 if v1 >= v0 else v1
            st.seconds += t1 - t0
            st.intervals += 1
            st.windows.append((t0, t1))
    return phases


@dataclass
class Join:
    """Which node exporter series price which training target, and how they were matched."""

    method: str
    nodes: dict[Target, list[Target]]  # training target -> node cost targets
    cost: dict[Target, list[tuple[float, float]]]  # node cost target -> monotonic counter

    def describe(self) -> str:
        names = sorted({dict(n).get("node") or dict(n).get("instance", "?") for ns in self.nodes.values()
                        for n in ns})
        return f"{len(names)} node exporter target(s) ({', '.join(names)}) joined by {self.method}"


def join_cost(training_targets: list[Target], cost_series: list[Series], method: str = "auto",
              explicit: bool = False) -> Join:
    """Match training targets to node cost series; AdvisorError naming the unmatched target otherwise."""
    cost = {target_of(s.labels): monotonic(s.points) for s in cost_series if s.points}
    if not cost:
        raise AdvisorError(f"no {NODE_COST} series in Prometheus for the window: is the node exporter scraped?")
    if explicit:
        return Join("--cost-selector", {t: list(cost) for t in training_targets}, cost)
    if method == "auto":
        has_node = all(dict(t).get("node") for t in training_targets) and any(dict(c).get("node") for c in cost)
        method = "node" if has_node else "instance-host"
    nodes: dict[Target, list[Target]] = {}
    for t in training_targets:
        tl = dict(t)
        if method == "instance-host":
            want = instance_host(tl.get("instance", ""))
            match = [c for c in cost if instance_host(dict(c).get("instance", "")) == want]
        else:
            want = tl.get(method, "")
            match = [c for c in cost if want and dict(c).get(method) == want]
        if not match:
            raise AdvisorError(f"cannot price training target {tl}: no {NODE_COST} series with the same {method} "
                               f"({want!r}); use --join LABEL or --cost-selector")
        nodes[t] = match
    return Join(method, nodes, cost)


def price_phases(phases: dict[str, Phase], join: Join) -> None:
    """The cost of each joined node while the job ran on it, over the phase's wall time.

    A node's cost rate while priced (its counter covers those intervals) is weighted by the share of the phase's
    wall time the job ran there: two nodes at once add up, one node after another average.
    """
    for ph in phases.values():
        wall = ph.seconds
        by_node: dict[Target, list[tuple[float, float]]] = defaultdict(list)
        for tgt, st in ph.targets.items():
            for node in join.nodes.get(tgt, []):
                by_node[node].extend(st.windows)
        rate = 0.0
        priced = False
        for node, windows in by_node.items():
            curve = join.cost[node]
            ran = merge(windows)
            usd = secs = 0.0
            for a, b in ran:
                a, b = max(a, curve[0][0]), min(b, curve[-1][0])  # scrapes of the two targets are offset
                if b <= a:
                    continue
                va, vb = value_at(curve, a), value_at(curve, b)
                if va is None or vb is None:
                    continue
                usd += vb - va
                secs += b - a
            if secs > 0 and wall > 0:
                node_rate = usd / secs
                rate += node_rate * covered(ran) / wall
                ph.cost_usd += node_rate * covered(ran)
                priced = True
        ph.usd_per_second = rate if priced else None


def resolve_job_label(prom: Prometheus, job: str, start: float, end: float, label: str = "auto") -> str:
    """Which label carries the training job's name: ``job`` (honor_labels) or ``exported_job``."""
    candidates = JOB_LABELS if label == "auto" else (label,)
    window = max(1, int(end - start))
    for lab in candidates:
        if prom.query(f"count(last_over_time({INFO}{{{lab}={quote(job)}}}[{window}s]))", at=end):
            return lab
    raise AdvisorError(f"no {INFO} series for job {job!r} (label {' or '.join(candidates)}) between the "
                       f"window's start and end: is the training process scraped, and is the job name right?")


@dataclass
class JobData:
    job_label: str
    samples: list[Series]
    tokens: list[Series]
    info: list[Series]
    cost: list[Series]
    explicit_cost: bool


def fetch(prom: Prometheus, job: str, start: float, end: float, *, job_label: str = "auto",
          cost_selector: str | None = None, progress=None) -> JobData:
    step = progress or (lambda _what: None)
    step("locating the job")
    lab = resolve_job_label(prom, job, start, end, job_label)
    sel = f"{{{lab}={quote(job)}}}"
    step("training samples")
    samples = prom.raw(SAMPLES + sel, start, end)
    step("training tokens")
    tokens = prom.raw(TOKENS + sel, start, end)
    step("training settings")
    info = prom.raw(INFO + sel, start, end)
    step("node cost")
    cost = prom.raw(NODE_COST + (cost_selector or ""), start, end)
    return JobData(lab, samples, tokens, info, cost, cost_selector is not None)
