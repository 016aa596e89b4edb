"""Recording rules and alerts as data, built from validated thresholds (see alerts/thresholds.py).

Every metric name comes from exporter.catalogue, so a rename breaks the build instead of silently emptying an alert.
Node-level rules aggregate `by (cluster, job, instance, node)`: labels a setup lacks just stay empty. The cluster and
node label names come from the thresholds file (`cluster_label`, `node_label`, as the kubernetes-mixin's selectors
do), so the same rules run in one Prometheus (where `cluster` is only an external label and groups stay empty) and
in a global view where many clusters' series meet: every `by ()`/`on ()` that must not cross clusters carries it.

Long windows (1d, 30d, the forecasts, the 1d idle share) never read raw per-HPU or per-node counters over days:
the `gaudi-exporter.increments` group records 5-minute increments per node, namespace and cluster (evaluated every
5m, so consecutive increments tile time), and the long windows are `sum_over_time` of those.
"""

from __future__ import annotations

import re

from alerts.thresholds import duration_seconds, format_duration
from exporter import catalogue

# Recorded 5-minute increments: the group's interval and the window of each increase() are the same, so
# consecutive increments tile time and sum_over_time over them is the increase over the long window.
STEP = "5m"
INCREMENTS_GROUP = "gaudi-exporter.increments"
# A budget window whose recorded increments cover less than this share is "partial" (see docs/runbook.md).
COVERAGE_MIN = 0.98
SPOT, THERMAL, AIP = 'lifecycle="spot"', 'reason="thermal"', 'sensor="aip"'
UNCORRECTED, CORRECTED = 'type="uncorrected"', 'type="corrected"'
# The price source refreshed every 6h by default (exporter/pricing/aws.py); every other source is held to
# pricing.max_age.
ON_DEMAND_SOURCE = "aws_on_demand"


def _n(name: str) -> str:
    """A metric or recorded-series name, checked against the catalogue."""
    if name in catalogue.METRICS:
        return catalogue.get(name).name
    if name in catalogue.RECORDED:
        return catalogue.RECORDED[name].name
    raise KeyError(f"{name} is not in exporter/catalogue.py")


def _sel(base: str, *extra: str) -> str:
    parts = [p for p in (base, *extra) if p]
    return "{" + ", ".join(parts) + "}" if parts else ""


def _t(text: str, **values: object) -> str:
    """Fill [[key]] markers, leaving Prometheus' own {{ }} templates alone."""
    def sub(m: re.Match) -> str:
        return str(values[m.group(1)])
    return re.sub(r"\[\[(\w+)\]\]", sub, text)


def _num(x: float) -> str:
    return f"{x:g}"


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _step(t: dict) -> tuple[str, int]:
    """The increments' step and its seconds: STEP, unless a test built the rules with a shorter one."""
    step = t.get("_increment_step", STEP)
    return step, int(duration_seconds(step))


def _c(t: dict) -> str:
    """The cluster label's name (thresholds `cluster_label`)."""
    return t["cluster_label"]


def _node(t: dict) -> str:
    """Labels of a node-level series: cluster, job, instance and the node name label."""
    return f"{t['cluster_label']}, job, instance, {t['node_label']}"


def _per_node(t: dict, agg: str, by: str, inner, selector: str) -> str:
    """``agg by (by) (inner(series))``, where series without a node name label get their instance as one.

    Node-level history is grouped by the node name label because a DaemonSet rollout gives every exporter pod a new
    address (`instance`); a setup without a node label (static targets, the local demo) keeps one node per target.
    """
    n = t["node_label"]
    base = selector[1:-1] if selector else ""
    with_node = _sel(base, f'{n}!=""')
    without = _sel(base, f'{n}=""')
    return (f"{agg} by ({by}) (\n"
            f"    {inner(with_node)}\n"
            f"  or\n"
            f"    label_replace({inner(without)}, \"{n}\", \"$1\", \"instance\", \"(.*)\")\n"
            f")")


# ---------------------------------------------------------------------------------------------- recording rules

def efficiency_per_device(t: dict) -> str:
    """The efficiency score of each HPU over 5m (ARCHITECTURE.md): min(1, (0.7 util + 0.3 HBM used/total) / target)."""
    s = _sel(t["exporter_selector"])
    return (f"clamp_max(\n"
            f"  (\n"
            f"      0.7 * avg_over_time({_n('gaudi_hpu_utilization_ratio')}{s}[5m])\n"
            f"    + 0.3 * avg_over_time({_n('gaudi_hpu_memory_used_bytes')}{s}[5m])\n"
            f"          / (avg_over_time({_n('gaudi_hpu_memory_total_bytes')}{s}[5m]) > 0)\n"
            f"  ) / {_num(t['efficiency']['target'])},\n"
            f"  1\n"
            f")")


def _inc(name: str) -> str:
    """A recorded 5-minute increment, checked against the catalogue."""
    return _n(name)


def increment_rules(t: dict) -> list[dict]:
    """5-minute increments per node, namespace and cluster: what every long window sums (group interval = STEP).

    Per-HPU counters are summed per node here, so their pod/namespace labels (68x more series over 30 days than at
    any moment) never reach a long window.
    """
    s = _sel(t["exporter_selector"])
    c, node = _c(t), _node(t)
    ns_cost = _n("gaudi_namespace_cost_usd_total")
    unalloc = _n("gaudi_unallocated_cost_usd_total")
    node_cost = _n("gaudi_node_cost_usd_total")
    step, step_s = _step(t)

    def increase(metric: str):
        return lambda sel: f"increase({metric}{sel}[{step}])"

    def seconds(metric: str):  # a 0/1 gauge integrated over the step: seconds spent at 1
        return lambda sel: f"avg_over_time({metric}{sel}[{step}]) * {step_s}"

    def per_node(record: str, inner, extra: str = "") -> dict:
        by = f"{node}, {extra}" if extra else node
        return {"record": _inc(record), "expr": _per_node(t, "sum", by, inner, s)}

    def cluster(record: str, of: str) -> dict:
        return {"record": _inc(record), "expr": f"sum by ({c}) ({_inc(of)})"}

    return [
        per_node("node:gaudi_node_cost_usd:increase5m", increase(node_cost)),
        per_node("node:gaudi_hpu_cost_usd:increase5m", increase(_n("gaudi_hpu_cost_usd_total"))),
        per_node("node:gaudi_hpu_idle_cost_usd:increase5m", increase(_n("gaudi_hpu_idle_cost_usd_total"))),
        per_node("node:gaudi_hpu_busy_seconds:increase5m", increase(_n("gaudi_hpu_busy_seconds_total"))),
        per_node("node:gaudi_hpu_up_seconds:sum5m", seconds(_n("gaudi_hpu_up"))),
        # up minus busy, so a panel showing busy and idle shares reads each once instead of deriving one from the
        # other (reads this pass' two node series above, hence the second backfill pass)
        {"record": _inc("node:gaudi_hpu_idle_seconds:sum5m"),
         "expr": (f"clamp_min({_inc('node:gaudi_hpu_up_seconds:sum5m')} - "
                  f"{_inc('node:gaudi_hpu_busy_seconds:increase5m')}, 0)")},
        per_node("node:gaudi_spot_savings_usd:increase5m", increase(_n("gaudi_spot_savings_usd_total"))),
        per_node("node:gaudi_hpu_throttled_seconds:sum5m", seconds(_n("gaudi_hpu_throttled")), "reason"),
        # per HPU (pod labels summed away) for the per-device ECC alert; the node level sums these
        {"record": _inc("hpu:gaudi_hpu_ecc_errors:increase5m"),
         "expr": _per_node(t, "sum", f"{node}, hpu, uuid, type", increase(_n("gaudi_hpu_ecc_errors_total")), s)},
        {"record": _inc("node:gaudi_hpu_ecc_errors:increase5m"),
         "expr": f"sum by ({node}, type) ({_inc('hpu:gaudi_hpu_ecc_errors:increase5m')})"},
        # A node's unattributed cost goes under namespace="" (see the rate rule below for why).
        {"record": _inc("namespace:gaudi_namespace_cost_usd:increase5m"),
         "expr": (f"sum by ({c}, namespace) (\n"
                  f"    increase({ns_cost}{s}[{step}])\n"
                  f"  or\n"
                  f"    increase({unalloc}{s}[{step}])\n"
                  f"  or\n"
                  f"    (\n"
                  f"        increase({node_cost}{s}[{step}])\n"
                  f"      unless on ({c}, job, instance) {ns_cost}{s}\n"
                  f"      unless on ({c}, job, instance) {unalloc}{s}\n"
                  f"    )\n"
                  f")")},
        cluster("cluster:gaudi_node_cost_usd:increase5m", "node:gaudi_node_cost_usd:increase5m"),
        cluster("cluster:gaudi_hpu_cost_usd:increase5m", "node:gaudi_hpu_cost_usd:increase5m"),
        cluster("cluster:gaudi_hpu_idle_cost_usd:increase5m", "node:gaudi_hpu_idle_cost_usd:increase5m"),
        cluster("cluster:gaudi_spot_savings_usd:increase5m", "node:gaudi_spot_savings_usd:increase5m"),
        cluster("cluster:gaudi_hpu_busy_seconds:increase5m", "node:gaudi_hpu_busy_seconds:increase5m"),
        cluster("cluster:gaudi_hpu_up_seconds:sum5m", "node:gaudi_hpu_up_seconds:sum5m"),
        # the sum of the node-level idle seconds, written from the node series it is made of so that it reads
        # only series the first backfill pass records
        {"record": _inc("cluster:gaudi_hpu_idle_seconds:sum5m"),
         "expr": (f"sum by ({c}) (clamp_min({_inc('node:gaudi_hpu_up_seconds:sum5m')} - "
                  f"{_inc('node:gaudi_hpu_busy_seconds:increase5m')}, 0))")},
    ]


def recording_rules(t: dict) -> list[dict]:
    s = _sel(t["exporter_selector"])
    ts = _sel(t["training_selector"])
    c, node = _c(t), _node(t)
    node_cost = _n("gaudi_node_cost_usd_total")
    ns_cost = _n("gaudi_namespace_cost_usd_total")
    unalloc = _n("gaudi_unallocated_cost_usd_total")
    util = _n("gaudi_hpu_utilization_ratio")
    savings = _n("gaudi_spot_savings_usd_total")
    samples = _n("gaudi_training_samples_total")
    r = catalogue.RECORDED
    eff = efficiency_per_device(t)
    eff_indented = eff.replace("\n", "\n  ")

    def share_1h(by: str, level: str) -> str:
        idle, hpu = _inc(f"{level}:gaudi_hpu_idle_cost_usd:increase5m"), _inc(f"{level}:gaudi_hpu_cost_usd:increase5m")
        return (f"sum by ({by}) (sum_over_time({idle}[1h]))\n"
                f"/\n(sum by ({by}) (sum_over_time({hpu}[1h])) > 0)")

    return [
        {"record": r["node:gaudi_node_cost_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({node}) (rate({node_cost}{s}[5m])) * 3600"},
        {"record": r["cluster:gaudi_node_cost_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({c}) ({_n('node:gaudi_node_cost_usd_per_hour:rate5m')})"},
        # Attributed cost per namespace; a node's unattributed cost goes under namespace="": its unallocated
        # counter, or its whole cost when the exporter runs without Kubernetes attribution. This relies on the
        # exporter's own `namespace` label arriving unchanged (its ServiceMonitor/PodMonitor drops the target
        # labels namespace/pod/container), so node-level series carry no namespace. The cluster label is in the
        # join: pod IPs (instance) of different clusters overlap in a global view.
        {"record": r["namespace:gaudi_namespace_cost_usd_per_hour:rate5m"].name,
         "expr": (f"sum by ({c}, namespace) (\n"
                  f"    rate({ns_cost}{s}[5m])\n"
                  f"  or\n"
                  f"    rate({unalloc}{s}[5m])\n"
                  f"  or\n"
                  f"    (\n"
                  f"        rate({node_cost}{s}[5m])\n"
                  f"      unless on ({c}, job, instance) {ns_cost}{s}\n"
                  f"      unless on ({c}, job, instance) {unalloc}{s}\n"
                  f"    )\n"
                  f") * 3600")},
        # From the recorded increments: 12 samples per node instead of every HPU's raw samples over the hour.
        {"record": r["node:gaudi_idle_cost_ratio:rate1h"].name, "expr": share_1h(node, "node")},
        {"record": r["cluster:gaudi_idle_cost_ratio:rate1h"].name, "expr": share_1h(c, "cluster")},
        {"record": r["node:gaudi_hpu_utilization_ratio:avg"].name,
         "expr": f"avg by ({node}) ({util}{s})"},
        {"record": r["cluster:gaudi_hpu_utilization_ratio:avg"].name,
         "expr": f"avg by ({c}) ({util}{s})"},
        # HBM in use and HBM size per cluster: the fleet-wide weighted-load graph reads one series per cluster
        # instead of every HPU's raw gauges (16 M samples over 6h at 1,000 nodes)
        {"record": r["cluster:gaudi_hpu_memory_used_bytes:sum"].name,
         "expr": f"sum by ({c}) ({_n('gaudi_hpu_memory_used_bytes')}{s})"},
        {"record": r["cluster:gaudi_hpu_memory_total_bytes:sum"].name,
         "expr": f"sum by ({c}) ({_n('gaudi_hpu_memory_total_bytes')}{s})"},
        {"record": r["node:gaudi_cost_efficiency_ratio:avg5m"].name,
         "expr": f"avg by ({node}) (\n  {eff_indented}\n)"},
        {"record": r["cluster:gaudi_cost_efficiency_ratio:avg5m"].name,
         "expr": f"avg by ({c}) (\n  {eff_indented}\n)"},
        {"record": r["node:gaudi_spot_savings_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({node}) (rate({savings}{s}[5m])) * 3600"},
        {"record": r["cluster:gaudi_spot_savings_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({c}) ({_n('node:gaudi_spot_savings_usd_per_hour:rate5m')})"},
        # Exporter targets per cluster, so that absence is checked per cluster (GaudiExporterAbsent).
        {"record": _n("cluster:gaudi_exporter_targets:count"), "expr": f"count by ({c}) (up{s})"},
        # Training throughput per job; `namespace` (the training pod's namespace, a target label its PodMonitor
        # adds) is kept so the cost of the job's namespace can be joined. A job scraped without one (namespace="")
        # is joined to the namespace="" cost: unallocated HPUs plus nodes without Kubernetes attribution.
        {"record": r["job:gaudi_training_samples:rate5m"].name,
         "expr": f"sum by ({c}, namespace, job) (rate({samples}{ts}[5m]))"},
        {"record": r["job:gaudi_training_cost_usd_per_sample:rate5m"].name,
         "expr": (f"({_n('namespace:gaudi_namespace_cost_usd_per_hour:rate5m')} / 3600)\n"
                  f"/ on ({c}, namespace) group_right ()\n"
                  f"({_n('job:gaudi_training_samples:rate5m')} > 0)")},
    ]


# ---------------------------------------------------------------------------------------------- alerts

def _alert(t: dict, name: str, expr: str, severity: str, category: str, summary: str, description: str,
           for_: str | None = None, extra_labels: dict | None = None) -> dict:
    rule: dict = {"alert": name, "expr": expr}
    if for_ and duration_seconds(for_) > 0:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, "category": category, **(extra_labels or {})}
    rule["annotations"] = {"summary": summary, "description": description,
                           "runbook_url": f"{t['runbook_url']}#{name.lower()}"}
    return rule


def _coverage(t: dict, window: str) -> str:
    """Share of `window` the recorded cluster increments cover (1 once the rules have run for the whole window)."""
    return (f"count_over_time({_inc('cluster:gaudi_node_cost_usd:increase5m')}[{window}]) * {_step(t)[1]} / "
            f"{_num(duration_seconds(window))}")


def _partial_note(t: dict, window: str) -> str:
    """An alert-text suffix that says "partial" while the recorded increments cover less than the window."""
    c = _c(t)
    q = (f"count_over_time({_inc('cluster:gaudi_node_cost_usd:increase5m')}{{{c}=%q}}[{window}]) * {_step(t)[1]} / "
         f"{_num(duration_seconds(window))}")
    return ('{{ with printf "' + q + '" $labels.' + c + ' | query }}{{ with . | first | value }}'
            '{{ if lt . ' + _num(COVERAGE_MIN) + ' }} Partial: recorded cost covers only '
            '{{ . | humanizePercentage }} of the ' + window + ' window (the rules have not run that long), so this '
            'is a lower bound.{{ end }}{{ end }}{{ end }}')


def _budget_alerts(t: dict, period: str, budget: float, scope: str, metric: str, selector: str, by: str,
                   namespace: str | None) -> list[dict]:
    p = t["budgets"][period]
    window, horizon, burn = p["window"], p["forecast_horizon"], p["burn_rate_window"]
    kept = format_duration(duration_seconds(window) - duration_seconds(horizon))
    horizon_s = _num(duration_seconds(horizon))
    # Sums of recorded 5-minute increments: samples per evaluation = series x window / 5m, whatever the fleet
    # size. Spend is a sum (missing increments make it a lower bound, said "partial"); the burn rate is the mean
    # increment per second over the burn window, which missing increments do not bias.
    spend = f"sum by ({by}) (sum_over_time({metric}{selector}[{window}]))"
    forecast = (f"  sum by ({by}) (sum_over_time({metric}{selector}[{kept}]))\n"
                f"+ sum by ({by}) (avg_over_time({metric}{selector}[{burn}])) / {_step(t)[1]} * {horizon_s}")
    title = "Daily" if period == "daily" else "Monthly"
    prefix = "GaudiNamespace" if namespace else "Gaudi"
    who = (f"namespace {namespace}" if namespace else "the Gaudi fleet") + _cluster_text(t)
    values = {"who": who, "Who": who[0].upper() + who[1:], "window": window, "horizon": horizon, "burn": burn,
              "budget": _num(budget)}
    labels = {"period": period}
    note = _partial_note(t, window)
    return [
        _alert(t, f"{prefix}{title}BudgetExceeded", f"{spend} > {_num(budget)}", "critical", "budget",
               _t(f"{scope} Gaudi spend over the last [[window]] is over its budget.", **values),
               _t("[[Who]] spent {{ $value | printf \"%.2f\" }} USD over the last [[window]], over its budget of "
                  "[[budget]] USD.", **values) + note,
               p["exceeded_for"], labels),
        _alert(t, f"{prefix}{title}BudgetForecastExceeded", f"(\n{forecast}\n) > {_num(budget)}", "warning",
               "budget",
               _t(f"{scope} Gaudi spend is forecast to exceed its [[window]] budget within [[horizon]].",
                  **values),
               _t("At the burn rate of the last [[burn]], [[who]] will have spent {{ $value | printf \"%.2f\" }} "
                  "USD over a [[window]] window [[horizon]] from now, over its budget of [[budget]] USD.",
                  **values) + note,
               p["forecast_for"], labels),
    ]


def _cluster_text(t: dict) -> str:
    c = _c(t)
    return "{{ with $labels." + c + " }} in cluster {{ . }}{{ end }}"


def budget_alerts(t: dict) -> list[dict]:
    c = _c(t)
    out: list[dict] = []
    for period in ("daily", "monthly"):
        budget = t["budgets"]["cluster"][f"{period}_usd"]
        if budget is not None:
            out += _budget_alerts(t, period, budget, "Cluster", _inc("cluster:gaudi_node_cost_usd:increase5m"), "",
                                  c, None)
    for period in ("daily", "monthly"):
        for ns, b in sorted(t["budgets"]["namespaces"].items()):
            if b[f"{period}_usd"] is not None:
                out += _budget_alerts(t, period, b[f"{period}_usd"], "Namespace",
                                      _inc("namespace:gaudi_namespace_cost_usd:increase5m"),
                                      _sel(f'namespace="{ns}"'), f"{c}, namespace", ns)
    # While the recorded increments do not yet cover a budget window (a new install, or rules added recently),
    # the budget alerts and the dashboards' long windows over it see a lower bound: say so rather than under-report
    # silently. Always present (also without budgets: the 30-day panels read the same increments).
    for period in ("daily", "monthly"):
        window = t["budgets"][period]["window"]
        out.append(_alert(
            t, f"Gaudi{'Daily' if period == 'daily' else 'Monthly'}BudgetWindowPartial",
            f"{_coverage(t, window)} < {_num(COVERAGE_MIN)}", "info", "budget",
            f"The {window} budget window is only partly recorded: budget alerts over it see a lower bound.",
            _t("Recorded Gaudi cost" + _cluster_text(t) + " covers {{ $value | humanizePercentage }} of the "
               "[[window]] budget window (the recording rules have not run that long, or evaluations were missed): "
               "spend and forecast over [[window]] are partial until it is full.", window=window),
            None, {"period": period}))
    return out


ON_NODE = "{{ $labels.instance }}{{ with $labels.node }} (node {{ . }}){{ end }}"
HPU = "HPU {{ $labels.hpu }} ({{ $labels.uuid }}) on " + ON_NODE


def efficiency_alerts(t: dict) -> list[dict]:
    base = t["exporter_selector"]
    e, i = t["efficiency"], t["idle"]
    c, n, node = _c(t), t["node_label"], _node(t)
    held = _sel(base, 'pod!=""')
    w = i["cost_share_window"]
    return [
        _alert(t, "GaudiEfficiencyBelowFloor",
               f"{_n('node:gaudi_cost_efficiency_ratio:avg5m')} < {_num(e['floor'])}", "warning", "efficiency",
               "A Gaudi node's efficiency score is below the floor.",
               _t("Node " + ON_NODE + " scored {{ $value | humanizePercentage }} over the last 5m (0.7 x HPU "
                  "utilisation + 0.3 x HBM use, against a target of [[target]]), below the floor of [[floor]] "
                  "for [[for]].", target=_pct(e["target"]), floor=_pct(e["floor"]), **{"for": e["for"]}),
               e["for"]),
        # One alert per pod holding idle HPUs (what a person acts on), not one per idle HPU: unallocated HPUs
        # (no pod) are capacity, shown on the fleet dashboard, and would page 1,311 times at 1,000 nodes.
        _alert(t, "GaudiHpuIdle",
               (f"count by ({node}, namespace, pod) (\n"
                f"  {_n('gaudi_hpu_utilization_ratio')}{held} < {_num(i['utilization_floor'])}\n"
                f")"),
               "warning", "efficiency", "A pod holds Gaudi HPUs that are idle.",
               _t("Pod {{ $labels.namespace }}/{{ $labels.pod }} on " + ON_NODE + " holds {{ $value }} HPU(s) "
                  "below [[floor]] utilisation for [[for]]; they are paid for and doing nothing.",
                  floor=_pct(i["utilization_floor"]), **{"for": i["for"]}),
               i["for"]),
        # From the recorded per-node increments, grouped by the node name (not instance, which a rollout renames).
        _alert(t, "GaudiIdleCostShareHigh",
               (f"  sum by ({c}, {n}) (sum_over_time({_inc('node:gaudi_hpu_idle_cost_usd:increase5m')}[{w}]))\n"
                f"/\n  (sum by ({c}, {n}) (sum_over_time({_inc('node:gaudi_hpu_cost_usd:increase5m')}[{w}])) > 0)\n"
                f"> {_num(i['cost_share_max'])}"),
               "info", "efficiency", "Much of a Gaudi node's cost is spent on idle HPUs.",
               _t("{{ $value | humanizePercentage }} of the HPU cost of node {{ $labels." + n + " }} over the last "
                  "[[w]] paid for idle HPUs (limit [[max]]).", w=w, max=_pct(i["cost_share_max"])),
               i["cost_share_for"]),
    ]


def spot_alerts(t: dict) -> list[dict]:
    base = t["exporter_selector"]
    s = _sel(base)
    sp = t["spot"]
    at_risk = _n("gaudi_cost_at_risk_usd")
    c = _c(t)
    target = "{" + c + "=%q,instance=%q,job=%q}\" $labels." + c + " $labels.instance $labels.job"
    when = ('{{ with printf "' + _n("gaudi_spot_interruption_time_seconds") + target + ' | query }}'
            '{{ with . | first | value }}'
            '{{ if gt . 0.0 }} at {{ . | humanizeTimestamp }}{{ end }}{{ end }}{{ end }}')
    risk = ('{{ with printf "' + at_risk + target + ' | query }}'
            ' {{ . | first | value | printf "%.2f" }} USD of work since the last checkpoint is at risk.{{ end }}')
    return [
        _alert(t, "GaudiSpotInterruptionNotice", f"{_n('gaudi_spot_interruption_pending')}{s} == 1",
               "critical", "spot", "EC2 will interrupt a Gaudi spot node in about two minutes.",
               "EC2 scheduled the interruption of spot node " + ON_NODE + when + "." + risk +
               " Checkpoint now if the job can.", None),
        _alert(t, "GaudiSpotRebalanceRecommended", f"{_n('gaudi_spot_rebalance_recommended')}{s} == 1",
               "warning", "spot", "EC2 recommends moving work off a Gaudi spot node.",
               "EC2 raised a rebalance recommendation for spot node " + ON_NODE + ": its interruption risk is "
               "elevated. Checkpoint and plan to move the job.", None),
        _alert(t, "GaudiSpotCostAtRiskHigh",
               (f"{at_risk}{s} > {_num(sp['cost_at_risk_max_usd'])}\n"
                f"and on ({_c(t)}, job, instance)\n"
                f"{_n('gaudi_node_price_usd_per_hour')}{_sel(base, SPOT)}"),
               "warning", "spot", "Too much unsaved work on a Gaudi spot node.",
               _t("Spot node " + ON_NODE + " has accrued {{ $value | printf \"%.2f\" }} USD since the last "
                  "checkpoint (or since the exporter started, when none was reported), over the ceiling of [[max]] "
                  "USD: an interruption now would throw that away.",
                  max=_num(sp["cost_at_risk_max_usd"])),
               sp["cost_at_risk_for"]),
    ]


def health_alerts(t: dict) -> list[dict]:
    base = t["exporter_selector"]
    s = _sel(base)
    h, th, ecc, nic, pr = t["health"], t["thermal"], t["ecc"], t["nic"], t["pricing"]
    ports = "|".join(str(p) for p in sorted(nic["ignore_ports"]))
    nic_sel = _sel(base, f'port!~"{ports}"') if ports else s
    stamp = _n("gaudi_pricing_last_success_timestamp_seconds")
    c, targets = _c(t), _n("cluster:gaudi_exporter_targets:count")
    od = f'"{ON_DEMAND_SOURCE}"'
    return [
        _alert(t, "GaudiExporterDown", f"up{s} == 0", "critical", "health",
               "A Gaudi exporter cannot be scraped.",
               _t("Prometheus has failed to scrape the Gaudi exporter at " + ON_NODE + " for [[for]]: this "
                  "node's HPU health, cost and spot notices are not being seen.", **{"for": h["exporter_down_for"]}),
               h["exporter_down_for"]),
        # Per cluster: a cluster that had exporter targets within the last day and has none now (one cluster of a
        # global view losing its exporters leaves absent() silent), or none anywhere for a day (a new install).
        _alert(t, "GaudiExporterAbsent",
               (f"(\n"
                f"    group by ({c}) (max_over_time({targets}[1d]))\n"
                f"  unless on ({c})\n"
                f"    {targets}\n"
                f")\n"
                f"or\n"
                f"(\n"
                f"    absent(up{s})\n"
                f"  unless on ()\n"
                f"    max_over_time({targets}[1d])\n"
                f")"),
               "critical", "health",
               "No Gaudi exporter target is known to Prometheus.",
               _t("Prometheus has had no target matching [[sel]]" + _cluster_text(t) + " for [[for]]: no Gaudi node "
                  "there is monitored and no cost is counted.", sel=base, **{"for": h["exporter_absent_for"]}),
               h["exporter_absent_for"]),
        _alert(t, "GaudiCollectorFailing", f"{_n('gaudi_exporter_collector_success')}{s} == 0", "warning",
               "health", "A Gaudi exporter collector keeps failing.",
               _t("Collector {{ $labels.collector }} of the exporter on " + ON_NODE + " has failed every run for "
                  "[[for]]; its series are missing or stale. The exporter log says why.",
                  **{"for": h["collector_failing_for"]}),
               h["collector_failing_for"]),
        # Each source is held to its own refresh period: on-demand prices are refreshed every 6h by default.
        _alert(t, "GaudiPricingStale",
               (f"time() - {stamp}{_sel(base, f'source!={od}')} > {_num(duration_seconds(pr['max_age']))}\n"
                f"or\n"
                f"time() - {stamp}{_sel(base, f'source={od}')} > "
                f"{_num(duration_seconds(pr['on_demand_max_age']))}"),
               "warning", "health", "The Gaudi node price has not been refreshed.",
               _t("The last good price from source {{ $labels.source }} on " + ON_NODE + " is "
                  "{{ $value | humanizeDuration }} old (limit {{ if eq $labels.source \"[[od]]\" }}[[od_age]]"
                  "{{ else }}[[age]]{{ end }}); cost keeps integrating the last good price.",
                  od=ON_DEMAND_SOURCE, od_age=pr["on_demand_max_age"], age=pr["max_age"]),
               pr["for"]),
        _alert(t, "GaudiHpuReadErrors",
               f"increase({_n('gaudi_hpu_read_errors_total')}{s}[{h['read_errors_window']}]) > "
               f"{_num(h['read_errors_max'])}",
               "warning", "health", "Reads of a Gaudi HPU are failing.",
               _t("{{ $value | printf \"%.0f\" }} reads of HPU {{ $labels.hpu }} on " + ON_NODE + " failed in "
                  "the last [[w]] (limit [[max]]).", w=h["read_errors_window"], max=_num(h["read_errors_max"])),
               h["read_errors_for"]),
        _alert(t, "GaudiHpuLost", f"{_n('gaudi_hpu_up')}{s} == 0", "critical", "health",
               "A Gaudi HPU has been lost.",
               _t(HPU + " was seen before and has not answered for [[for]]: the device or its driver failed.",
                  **{"for": h["hpu_lost_for"]}),
               h["hpu_lost_for"]),
        _alert(t, "GaudiHpuThermalThrottling",
               f"{_n('gaudi_hpu_throttled')}{_sel(base, THERMAL)} == 1", "warning", "health",
               "A Gaudi HPU is thermally throttled.",
               _t(HPU + " has had its clocks throttled for temperature for [[for]]; the job on it runs slower.",
                  **{"for": th["throttling_for"]}),
               th["throttling_for"]),
        _alert(t, "GaudiHpuTemperatureHigh",
               f"{_n('gaudi_hpu_temperature_celsius')}{_sel(base, AIP)} > "
               f"{_num(th['aip_temperature_max_celsius'])}",
               "warning", "health", "A Gaudi HPU is running hot.",
               _t(HPU + " has been above [[max]] C for [[for]] (now {{ $value | printf \"%.1f\" }} C).",
                  max=_num(th["aip_temperature_max_celsius"]), **{"for": th["temperature_for"]}),
               th["temperature_for"]),
        _alert(t, "GaudiHpuEccUncorrectable",
               f"{_n('gaudi_hpu_ecc_errors_total')}{_sel(base, UNCORRECTED)} > "
               f"{_num(ecc['uncorrected_max'])}",
               "critical", "health", "A Gaudi HPU has uncorrectable memory errors.",
               _t(HPU + " reports {{ $value | printf \"%.0f\" }} uncorrectable ECC errors since driver load "
                  "(limit [[max]]); its results cannot be trusted until it is reset.",
                  max=_num(ecc["uncorrected_max"])),
               None),
        # From the recorded per-HPU 5-minute increments (pod labels summed away): 12 samples per HPU per hour.
        _alert(t, "GaudiHpuEccCorrectedHigh",
               f"sum_over_time({_inc('hpu:gaudi_hpu_ecc_errors:increase5m')}{{{CORRECTED}}}"
               f"[{ecc['corrected_window']}]) > {_num(ecc['corrected_max'])}",
               "warning", "health", "A Gaudi HPU corrects many memory errors.",
               _t(HPU + " corrected {{ $value | printf \"%.0f\" }} ECC errors in the last [[w]] (limit [[max]]): "
                  "its memory may be failing.", w=ecc["corrected_window"], max=_num(ecc["corrected_max"])),
               None),
        _alert(t, "GaudiHpuNicPortDown", f"{_n('gaudi_hpu_nic_port_up')}{nic_sel} == 0", "warning", "health",
               "A Gaudi HPU NIC port is down.",
               _t("NIC port {{ $labels.port }} of " + HPU + " has been down for [[for]]; collective "
                  "communication over it fails or slows.", **{"for": nic["port_down_for"]}),
               nic["port_down_for"]),
    ]


def _hpu_health(t: dict) -> list[dict]:
    from alerts.hpu_health import hpu_health_alerts  # it imports this module's helpers

    return hpu_health_alerts(t)


def groups(t: dict, increment_step: str = STEP) -> dict[str, list[dict]]:
    """Rule files by name, each a list of rule groups.

    ``increment_step`` shortens the increments (group interval and window) for tests and demos that cannot wait 5
    minutes; the recorded names keep saying 5m, so anything else is for those only.
    """
    t = {**t, "_increment_step": increment_step}
    return {
        "prometheus_rules.yaml": [
            # evaluated every STEP exactly: the increments tile time only at that interval
            {"name": INCREMENTS_GROUP, "interval": _step(t)[0], "rules": increment_rules(t)},
            {"name": "gaudi-exporter.rules", "rules": recording_rules(t)},
        ],
        "prometheus_alerts.yaml": [
            {"name": "gaudi-exporter.budget", "rules": budget_alerts(t)},
            {"name": "gaudi-exporter.efficiency", "rules": efficiency_alerts(t)},
            {"name": "gaudi-exporter.spot", "rules": spot_alerts(t)},
            {"name": "gaudi-exporter.health", "rules": health_alerts(t)},
            {"name": "gaudi-exporter.hpu-health", "rules": _hpu_health(t)},
        ],
    }
