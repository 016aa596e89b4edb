"""Efficiency: how much of what the HPUs cost turns into training work, against the target in the thresholds file."""

from __future__ import annotations

from dashboards import panels as P
from dashboards.panels import CLUSTER_SEL, DEVICE_SEL, NODE_SEL, Q, metric
from dashboards.settings import Settings

UID = "gaudi-efficiency"
TITLE = "Gaudi / Efficiency"

SCORE = metric("node:gaudi_cost_efficiency_ratio:avg5m")
UTIL = metric("gaudi_hpu_utilization_ratio")
UP = metric("gaudi_hpu_up")
BUSY = metric("gaudi_hpu_busy_seconds_total")
MEM = metric("gaudi_hpu_memory_used_bytes")
MEM_TOTAL = metric("gaudi_hpu_memory_total_bytes")
COST = metric("gaudi_node_cost_usd_total")
IDLE = metric("gaudi_hpu_idle_cost_usd_total")
SAMPLES = metric("gaudi_training_samples_total")
TOKENS = metric("gaudi_training_tokens_total")
SAMPLES_RATE = metric("job:gaudi_training_samples:rate5m")
COST_PER_SAMPLE = metric("job:gaudi_training_cost_usd_per_sample:rate5m")
BUSY_INC = metric("node:gaudi_hpu_busy_seconds:increase5m")
UP_INC = metric("node:gaudi_hpu_up_seconds:sum5m")
IDLE_INC = metric("node:gaudi_hpu_idle_cost_usd:increase5m")
# fleet-wide graphs read one series per cluster: per-node lines over the default 6h at 1,000 nodes are ~1 M samples
CLUSTER_BUSY = metric("cluster:gaudi_hpu_busy_seconds:increase5m")
CLUSTER_UP = metric("cluster:gaudi_hpu_up_seconds:sum5m")
CLUSTER_IDLE = metric("cluster:gaudi_hpu_idle_cost_usd:increase5m")
CLUSTER_IDLE_S = metric("cluster:gaudi_hpu_idle_seconds:sum5m")
CLUSTER_UTIL = metric("cluster:gaudi_hpu_utilization_ratio:avg")
CLUSTER_MEM = metric("cluster:gaudi_hpu_memory_used_bytes:sum")
CLUSTER_MEM_TOTAL = metric("cluster:gaudi_hpu_memory_total_bytes:sum")

NODE_RATE = metric("node:gaudi_node_cost_usd_per_hour:rate5m")
# USD per second from the recorded 5m rate: computed once by the rules, not again by each panel over raw counters
COST_RATE = f"sum({NODE_RATE}{{{NODE_SEL}}}) / 3600"


def _score_steps(floor: float) -> list[dict]:
    """The score is already relative to the target (1 = at target); the alert fires below the floor."""
    return P.steps(("red", None), ("green", floor))


def build(s: Settings) -> P.Board:
    t = s.efficiency_target
    score_desc = (f"min(1, (0.7 x utilisation + 0.3 x HBM used share) / target), averaged over 5 minutes; 1 means "
                  f"at target (efficiency.target {t:g}). Red below efficiency.floor {s.efficiency_floor:g}, "
                  f"where the alert fires ({s.source}).")
    composite = (f"(0.7 * avg by (namespace) ({UTIL}{{{DEVICE_SEL}, namespace!=\"\"}}) + 0.3 * "
                 f"sum by (namespace) ({MEM}{{{DEVICE_SEL}, namespace!=\"\"}}) / "
                 f"sum by (namespace) ({MEM_TOTAL}{{{DEVICE_SEL}, namespace!=\"\"}}))")
    top = [
        P.gauge("Efficiency score", P.RATIO, [Q(f"avg({SCORE}{{{NODE_SEL}}})", "score", instant=True)], w=6, h=7,
                thresholds=_score_steps(s.efficiency_floor), description=score_desc),
        P.timeseries("Efficiency score by node", P.RATIO,
                     [Q(f"max by (instance) ({SCORE}{{{NODE_SEL}}})", "{{instance}}")], w=10, h=7, min_=0,
                     max_=1, thresholds=_score_steps(s.efficiency_floor), threshold_line=True, description=score_desc,
                     min_interval="5m",
                     links=[P.link("Devices of ${__field.labels.instance}", "gaudi-fleet",
                                   node="${__field.labels.instance}")]),
        P.stat("Busy HPU-hours (range)", P.HOURS,
               [Q(f"sum(sum_over_time({BUSY_INC}{{{NODE_SEL}}}[$__range])) / 3600", "busy", instant=True)], w=4,
               h=7, decimals=2, thresholds=P.steps(("green", None)),
               description="Busy HPU-seconds of the selected nodes, from the recorded 5-minute increments."),
        P.stat("Idle HPU-hours (range)", P.HOURS,
               [Q(f"clamp_min(sum(sum_over_time({UP_INC}{{{NODE_SEL}}}[$__range])) - "
                  f"sum(sum_over_time({BUSY_INC}{{{NODE_SEL}}}[$__range])), 0) / 3600", "idle", instant=True)],
               w=4, h=7, decimals=2, thresholds=P.steps(("orange", None)),
               description="HPU-hours the selected nodes' devices were up minus busy HPU-hours (recorded 5-minute "
                           "increments)."),
    ]
    # from the recorded increments: one rate computed once per node per 5m, not a rate of every HPU's counter
    # busy and idle each from their own recorded seconds (idle = up - busy, recorded): no line re-derives the other
    busy_share = f"sum({CLUSTER_BUSY}{{{CLUSTER_SEL}}}) / sum({CLUSTER_UP}{{{CLUSTER_SEL}}})"
    idle_share = f"sum({CLUSTER_IDLE_S}{{{CLUSTER_SEL}}}) / sum({CLUSTER_UP}{{{CLUSTER_SEL}}})"
    # from per-cluster recorded series (one series each per cluster), not every HPU's raw gauges
    load = (f"0.7 * avg({CLUSTER_UTIL}{{{CLUSTER_SEL}}}) + 0.3 * sum({CLUSTER_MEM}{{{CLUSTER_SEL}}}) / "
            f"sum({CLUSTER_MEM_TOTAL}{{{CLUSTER_SEL}}})")
    second = [
        P.timeseries("Weighted load vs target", P.RATIO, [Q(load, "0.7 x utilisation + 0.3 x HBM share")], w=8,
                     min_=0, max_=1, thresholds=P.steps(("red", None), ("green", t)), threshold_line=True,
                     description=f"The score's numerator for the selected clusters (recorded per cluster; with "
                                 f"several clusters selected, each cluster's mean utilisation counts equally); the "
                                 f"line is efficiency.target {t:g} from {s.source}."),
        P.timeseries("Busy vs idle time", P.RATIO, [Q(busy_share, "busy"), Q(idle_share, "idle")],
                     w=8, stack=True, min_=0, max_=1, fill=60,
                     description="Share of the selected clusters' HPU time spent busy (utilisation integrated over "
                                 "time) and idle, from the recorded 5-minute increments."),
        P.timeseries("Idle cost rate (USD/h)", P.USD,
                     [Q(f"sum by (cluster) ({CLUSTER_IDLE}{{{CLUSTER_SEL}}}) * 12", "{{cluster}}")], w=8,
                     stack=True, min_=0,
                     description="Idle HPU cost of the selected clusters: recorded 5-minute increments x 12. Per "
                                 "node: 'Idle cost share by node' on the cost board."),
    ]
    training = [
        P.stat("Training throughput", "suffix: samples/s",
               [Q(f"sum({SAMPLES_RATE}{{{CLUSTER_SEL}}})", "samples/s", instant=True)], w=4, h=8,
               needs=[P.TRAINING], decimals=1, thresholds=P.steps(("green", None)), graph=True),
        P.timeseries("Cost per 1,000 samples", P.USD,
                     [Q(f"{COST_RATE} / sum({SAMPLES_RATE}{{{CLUSTER_SEL}}}) * 1000",
                        "selected nodes")], w=7, min_=0, needs=[P.TRAINING], min_interval="5m",
                     description="Cost rate of the selected nodes divided by the samples the training jobs "
                                 "report (gaudi_training_samples_total)."),
        P.timeseries("Cost per 1,000 samples by job", P.USD,
                     [Q(f"{COST_PER_SAMPLE}{{{CLUSTER_SEL}}} * 1000", "{{namespace}} {{job}}")], w=6, min_=0,
                     needs=[P.TRAINING],
                     description="The recording rule: the cost rate of the job's namespace over the job's sample "
                                 "rate (a namespace's jobs are each charged all of it). A job scraped without a "
                                 'namespace label is charged namespace "": unallocated HPUs and nodes without '
                                 "Kubernetes attribution."),
        P.timeseries("Cost per million tokens", P.USD,
                     [Q(f"{COST_RATE} / sum(rate({TOKENS}{{{CLUSTER_SEL}}}[$__rate_interval])) * 1e6",
                        "selected nodes")], w=7, min_=0, needs=[P.TRAINING], min_interval="5m",
                     description="Only for jobs that export gaudi_training_tokens_total."),
    ]
    by_owner = [
        P.bargauge("Efficiency by node", P.RATIO, [Q(f"max by (instance) ({SCORE}{{{NODE_SEL}}})", "{{instance}}",
                                                     instant=True)],
                   w=12, h=7, max_=1, thresholds=_score_steps(s.efficiency_floor)),
        P.bargauge("Efficiency by namespace", P.RATIO,
                   [Q(f"clamp_max({composite} / {t:g}, 1)", "{{namespace}}", instant=True)], w=12, h=7, max_=1,
                   thresholds=_score_steps(s.efficiency_floor), needs=[P.KUBERNETES], description=score_desc),
    ]
    return P.dashboard(UID, TITLE, "Efficiency score against its target, busy vs idle HPU time, and cost per "
                       "sample or token of the training jobs.", [top, second, training, by_owner],
                       annotations=P.spot_annotations())
