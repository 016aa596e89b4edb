"""Recording rules and alerts as data, built from validated thresholds (see alerts/thresholds.py).

Every metric name comes from exporter.catalogue, so a rename breaks the build instead of silently emptying an alert.
Node-level rules aggregate `by (cluster, job, instance, node)`: labels a setup lacks just stay empty.
"""

from __future__ import annotations

import re

from alerts.thresholds import duration_seconds, format_duration
from exporter import catalogue

NODE = "cluster, job, instance, node"
CLUSTER = "{{ with $labels.cluster }} in cluster {{ . }}{{ end }}"
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


def recording_rules(t: dict) -> list[dict]:
    s = _sel(t["exporter_selector"])
    ts = _sel(t["training_selector"])
    node_cost = _n("gaudi_node_cost_usd_total")
    ns_cost = _n("gaudi_namespace_cost_usd_total")
    unalloc = _n("gaudi_unallocated_cost_usd_total")
    hpu_cost = _n("gaudi_hpu_cost_usd_total")
    idle_cost = _n("gaudi_hpu_idle_cost_usd_total")
    util = _n("gaudi_hpu_utilization_ratio")
    savings = _n("gaudi_spot_savings_usd_total")
    samples = _n("gaudi_training_samples_total")
    r = catalogue.RECORDED
    eff = efficiency_per_device(t)
    eff_indented = eff.replace("\n", "\n  ")
    return [
        {"record": r["node:gaudi_node_cost_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({NODE}) (rate({node_cost}{s}[5m])) * 3600"},
        {"record": r["cluster:gaudi_node_cost_usd_per_hour:rate5m"].name,
         "expr": f"sum by (cluster) ({_n('node:gaudi_node_cost_usd_per_hour:rate5m')})"},
        # Attributed cost per namespace; a node's unattributed cost goes under namespace="": its unallocated
        # counter, or its whole cost when the exporter runs without Kubernetes attribution. This relies on the
        # exporter's own `namespace` label arriving unchanged (its ServiceMonitor/PodMonitor drops the target
        # labels namespace/pod/container), so node-level series carry no namespace.
        {"record": r["namespace:gaudi_namespace_cost_usd_per_hour:rate5m"].name,
         "expr": (f"sum by (cluster, namespace) (\n"
                  f"    rate({ns_cost}{s}[5m])\n"
                  f"  or\n"
                  f"    rate({unalloc}{s}[5m])\n"
                  f"  or\n"
                  f"    (\n"
                  f"        rate({node_cost}{s}[5m])\n"
                  f"      unless on (job, instance) {ns_cost}{s}\n"
                  f"      unless on (job, instance) {unalloc}{s}\n"
                  f"    )\n"
                  f") * 3600")},
        {"record": r["node:gaudi_idle_cost_ratio:rate1h"].name,
         "expr": (f"sum by ({NODE}) (rate({idle_cost}{s}[1h]))\n"
                  f"/\n(sum by ({NODE}) (rate({hpu_cost}{s}[1h])) > 0)")},
        {"record": r["cluster:gaudi_idle_cost_ratio:rate1h"].name,
         "expr": (f"sum by (cluster) (rate({idle_cost}{s}[1h]))\n"
                  f"/\n(sum by (cluster) (rate({hpu_cost}{s}[1h])) > 0)")},
        {"record": r["node:gaudi_hpu_utilization_ratio:avg"].name,
         "expr": f"avg by ({NODE}) ({util}{s})"},
        {"record": r["cluster:gaudi_hpu_utilization_ratio:avg"].name,
         "expr": f"avg by (cluster) ({util}{s})"},
        {"record": r["node:gaudi_cost_efficiency_ratio:avg5m"].name,
         "expr": f"avg by ({NODE}) (\n  {eff_indented}\n)"},
        {"record": r["cluster:gaudi_cost_efficiency_ratio:avg5m"].name,
         "expr": f"avg by (cluster) (\n  {eff_indented}\n)"},
        {"record": r["node:gaudi_spot_savings_usd_per_hour:rate5m"].name,
         "expr": f"sum by ({NODE}) (rate({savings}{s}[5m])) * 3600"},
        {"record": r["cluster:gaudi_spot_savings_usd_per_hour:rate5m"].name,
         "expr": f"sum by (cluster) ({_n('node:gaudi_spot_savings_usd_per_hour:rate5m')})"},
        # Training throughput per job; `namespace` (the training pod's namespace, a target label its PodMonitor
        # adds) is kept so the cost of the job's namespace can be joined. A job scraped without one (namespace="")
        # is joined to the namespace="" cost: unallocated HPUs plus nodes without Kubernetes attribution.
        {"record": r["job:gaudi_training_samples:rate5m"].name,
         "expr": f"sum by (cluster, namespace, job) (rate({samples}{ts}[5m]))"},
        {"record": r["job:gaudi_training_cost_usd_per_sample:rate5m"].name,
         "expr": (f"({_n('namespace:gaudi_namespace_cost_usd_per_hour:rate5m')} / 3600)\n"
                  f"/ on (cluster, namespace) group_right ()\n"
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


def _budget_alerts(t: dict, period: str, budget: float, scope: str, metric: str, selector: str, by: str,
                   namespace: str | None) -> list[dict]:
    p = t["budgets"][period]
    window, horizon, burn = p["window"], p["forecast_horizon"], p["burn_rate_window"]
    kept = format_duration(duration_seconds(window) - duration_seconds(horizon))
    horizon_s = _num(duration_seconds(horizon))
    spend = f"sum by ({by}) (increase({metric}{selector}[{window}]))"
    forecast = (f"  sum by ({by}) (increase({metric}{selector}[{kept}]))\n"
                f"+ sum by ({by}) (rate({metric}{selector}[{burn}])) * {horizon_s}")
    title = "Daily" if period == "daily" else "Monthly"
    prefix = "GaudiNamespace" if namespace else "Gaudi"
    who = (f"namespace {namespace}" if namespace else "the Gaudi fleet") + CLUSTER
    values = {"who": who, "Who": who[0].upper() + who[1:], "window": window, "horizon": horizon, "burn": burn,
              "budget": _num(budget)}
    labels = {"period": period}
    return [
        _alert(t, f"{prefix}{title}BudgetExceeded", f"{spend} > {_num(budget)}", "critical", "budget",
               _t(f"{scope} Gaudi spend over the last [[window]] is over its budget.", **values),
               _t("[[Who]] spent {{ $value | printf \"%.2f\" }} USD over the last [[window]], over its budget of "
                  "[[budget]] USD.", **values),
               p["exceeded_for"], labels),
        _alert(t, f"{prefix}{title}BudgetForecastExceeded", f"(\n{forecast}\n) > {_num(budget)}", "warning",
               "budget",
               _t(f"{scope} Gaudi spend is forecast to exceed its [[window]] budget within [[horizon]].",
                  **values),
               _t("At the burn rate of the last [[burn]], [[who]] will have spent {{ $value | printf \"%.2f\" }} "
                  "USD over a [[window]] window [[horizon]] from now, over its budget of [[budget]] USD.",
                  **values),
               p["forecast_for"], labels),
    ]


def budget_alerts(t: dict) -> list[dict]:
    s = t["exporter_selector"]
    out: list[dict] = []
    for period in ("daily", "monthly"):
        budget = t["budgets"]["cluster"][f"{period}_usd"]
        if budget is not None:
            out += _budget_alerts(t, period, budget, "Cluster", _n("gaudi_node_cost_usd_total"), _sel(s),
                                  "cluster", None)
    for period in ("daily", "monthly"):
        for ns, b in sorted(t["budgets"]["namespaces"].items()):
            if b[f"{period}_usd"] is not None:
                out += _budget_alerts(t, period, b[f"{period}_usd"], "Namespace",
                                      _n("gaudi_namespace_cost_usd_total"), _sel(s, f'namespace="{ns}"'),
                                      "cluster, namespace", ns)
    return out


ON_NODE = "{{ $labels.instance }}{{ with $labels.node }} (node {{ . }}){{ end }}"
HPU = "HPU {{ $labels.hpu }} ({{ $labels.uuid }}) on " + ON_NODE


def efficiency_alerts(t: dict) -> list[dict]:
    s = _sel(t["exporter_selector"])
    e, i = t["efficiency"], t["idle"]
    idle_cost, hpu_cost = _n("gaudi_hpu_idle_cost_usd_total"), _n("gaudi_hpu_cost_usd_total")
    w = i["cost_share_window"]
    return [
        _alert(t, "GaudiEfficiencyBelowFloor",
               f"{_n('node:gaudi_cost_efficiency_ratio:avg5m')} < {_num(e['floor'])}", "warning", "efficiency",
               "A Gaudi node's efficiency score is below the floor.",
               _t("Node " + ON_NODE + " scored {{ $value | humanizePercentage }} over the last 5m (0.7 x HPU "
                  "utilisation + 0.3 x HBM use, against a target of [[target]]), below the floor of [[floor]] "
                  "for [[for]].", target=_pct(e["target"]), floor=_pct(e["floor"]), **{"for": e["for"]}),
               e["for"]),
        _alert(t, "GaudiHpuIdle", f"{_n('gaudi_hpu_utilization_ratio')}{s} < {_num(i['utilization_floor'])}",
               "warning", "efficiency", "A Gaudi HPU is powered (or allocated) but idle.",
               _t(HPU + "{{ with $labels.pod }}, held by pod {{ $labels.namespace }}/{{ . }},{{ end }} has been "
                  "below [[floor]] utilisation for [[for]] (now {{ $value | humanizePercentage }}); it is paid "
                  "for and doing nothing.", floor=_pct(i["utilization_floor"]), **{"for": i["for"]}),
               i["for"]),
        _alert(t, "GaudiIdleCostShareHigh",
               (f"  sum by ({NODE}) (increase({idle_cost}{s}[{w}]))\n"
                f"/\n  (sum by ({NODE}) (increase({hpu_cost}{s}[{w}])) > 0)\n"
                f"> {_num(i['cost_share_max'])}"),
               "info", "efficiency", "Much of a Gaudi node's cost is spent on idle HPUs.",
               _t("{{ $value | humanizePercentage }} of the HPU cost of node " + ON_NODE + " over the last "
                  "[[w]] paid for idle HPUs (limit [[max]]).", w=w, max=_pct(i["cost_share_max"])),
               i["cost_share_for"]),
    ]


def spot_alerts(t: dict) -> list[dict]:
    base = t["exporter_selector"]
    s = _sel(base)
    sp = t["spot"]
    at_risk = _n("gaudi_cost_at_risk_usd")
    when = ('{{ with printf "' + _n("gaudi_spot_interruption_time_seconds") +
            '{instance=%q,job=%q}" $labels.instance $labels.job | query }}{{ with . | first | value }}'
            '{{ if gt . 0.0 }} at {{ . | humanizeTimestamp }}{{ end }}{{ end }}{{ end }}')
    risk = ('{{ with printf "' + at_risk + '{instance=%q,job=%q}" $labels.instance $labels.job | query }}'
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
                f"and on (job, instance)\n"
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
    od = f'"{ON_DEMAND_SOURCE}"'
    return [
        _alert(t, "GaudiExporterDown", f"up{s} == 0", "critical", "health",
               "A Gaudi exporter cannot be scraped.",
               _t("Prometheus has failed to scrape the Gaudi exporter at " + ON_NODE + " for [[for]]: this "
                  "node's HPU health, cost and spot notices are not being seen.", **{"for": h["exporter_down_for"]}),
               h["exporter_down_for"]),
        _alert(t, "GaudiExporterAbsent", f"absent(up{s})", "critical", "health",
               "No Gaudi exporter target is known to Prometheus.",
               _t("Prometheus has had no target matching [[sel]] for [[for]]: no Gaudi node is monitored and no "
                  "cost is counted.", sel=base, **{"for": h["exporter_absent_for"]}),
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
        _alert(t, "GaudiHpuEccCorrectedHigh",
               f"increase({_n('gaudi_hpu_ecc_errors_total')}{_sel(base, CORRECTED)}"
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


def groups(t: dict) -> dict[str, list[dict]]:
    """Rule files by name, each a list of rule groups."""
    return {
        "prometheus_rules.yaml": [{"name": "gaudi-exporter.rules", "rules": recording_rules(t)}],
        "prometheus_alerts.yaml": [
            {"name": "gaudi-exporter.budget", "rules": budget_alerts(t)},
            {"name": "gaudi-exporter.efficiency", "rules": efficiency_alerts(t)},
            {"name": "gaudi-exporter.spot", "rules": spot_alerts(t)},
            {"name": "gaudi-exporter.health", "rules": health_alerts(t)},
            {"name": "gaudi-exporter.hpu-health", "rules": _hpu_health(t)},
        ],
    }
