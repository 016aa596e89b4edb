"""The single list of every metric name the project exposes or records.

Collectors, the rule generator, the dashboards and the docs all take names from here, so a rename cannot leave a
dashboard or an alert behind (a test checks that every name they use is listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    INFO = "info"  # exposed as a gauge of value 1 whose name ends in _info


class Group(StrEnum):
    """Who produces a metric; the docs group the reference by it."""

    EXPORTER = "exporter"
    HPU = "hpu"
    HOST = "host"
    COST = "cost"
    SPOT = "spot"
    MARKET = "market"
    KUBERNETES = "kubernetes"
    TRAINING = "training"


# Labels every per-device series carries; attribution adds ATTRIBUTION_LABELS when it is on.
DEVICE_LABELS: tuple[str, ...] = ("hpu", "uuid")
ATTRIBUTION_LABELS: tuple[str, ...] = ("namespace", "pod", "container")
# not "job": every Prometheus sets that target label itself and would rename ours exported_job (dcgm-exporter's
# HPC mode calls it hpc_job for the same reason)
HPC_LABELS: tuple[str, ...] = ("hpc_job",)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    help: str
    labels: tuple[str, ...] = ()
    group: Group = Group.HPU
    per_device: bool = False  # carries DEVICE_LABELS first (and attribution labels when enabled)

    def label_names(self, attribution: tuple[str, ...] = ()) -> tuple[str, ...]:
        if self.per_device:
            return DEVICE_LABELS + attribution + self.labels
        return self.labels

    @property
    def family(self) -> str:
        """The name without the suffix prometheus_client adds back (``_total`` of counters, ``_info``)."""
        if self.kind is Kind.COUNTER and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        if self.kind is Kind.INFO and self.name.endswith("_info"):
            return self.name[: -len("_info")]
        return self.name


def _m(name: str, kind: Kind, unit: str, help_: str, labels: tuple[str, ...] = (), *, group: Group,
       per_device: bool = False) -> Metric:
    return Metric(name, kind, unit, help_, labels, group, per_device)


C, G, H, INFO = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM, Kind.INFO

_ALL: list[Metric] = [
    # --- the exporter itself
    _m("gaudi_exporter_build_info", INFO, "", "Version of the exporter, its device backend (simulated data says "
       "so here) and its mode.", ("version", "backend", "mode"), group=Group.EXPORTER),
    _m("gaudi_exporter_collector_duration_seconds", G, "seconds", "Time the collector took in the last tick.",
       ("collector",), group=Group.EXPORTER),
    _m("gaudi_exporter_collector_success", G, "", "1 if the collector's last run succeeded, else 0.",
       ("collector",), group=Group.EXPORTER),
    _m("gaudi_exporter_last_collection_timestamp_seconds", G, "seconds",
       "Unix time at which the last collection tick finished.", group=Group.EXPORTER),
    _m("gaudi_exporter_ticks_total", C, "", "Collection ticks run since start.", group=Group.EXPORTER),
    _m("gaudi_exporter_http_bad_requests_total", C, "", "HTTP requests and connections the server refused or "
       "cut short, by reason (malformed, headers_too_large, timeout, tls_handshake, plain_http_to_tls, unauthorized, "
       "...): answered with a 4xx where an answer is possible.", ("reason",), group=Group.EXPORTER),
    # --- devices
    _m("gaudi_hpu_info", INFO, "", "Identity of an HPU; join on hpu/uuid for serial, model and versions.",
       ("serial", "name", "model", "pci_bus_id", "driver_version", "firmware_version", "backend"),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_up", G, "", "1 if the HPU was read in the last tick; 0 if it was seen before and is now lost "
       "(its other series stop).", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_utilization_ratio", G, "ratio", "AIP utilisation, 0-1, as reported by the driver.",
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_busy_seconds_total", C, "seconds", "Utilisation integrated over time: busy seconds.",
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_memory_used_bytes", G, "bytes", "HBM in use.", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_memory_total_bytes", G, "bytes", "HBM size.", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_power_watts", G, "watts", "Power draw.", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_power_limit_watts", G, "watts", "Power management limit.", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_energy_joules_total", C, "joules", "Energy consumed (the driver's counter, kept monotonic across "
       "driver reloads; integrated from power where the driver has none).", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_temperature_celsius", G, "celsius", "Temperature by sensor (aip, board, hbm, and other, vrm, "
       "ctemp where reported).", ("sensor",),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_clock_hertz", G, "hertz", "Current clock frequency by clock domain (soc, ic, mme, tpc where "
       "reported).", ("clock",),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_ecc_errors_total", C, "", "ECC errors since driver load (aggregate), by type "
       "(corrected, uncorrected).", ("type",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_throttled", G, "", "1 while clocks are throttled for the reason (power, thermal).", ("reason",),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_pcie_replays_total", C, "", "PCIe replay count.", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_nic_port_up", G, "", "1 if the NIC port link is up (only with "
       "--collector.hpu.nic-ports=per-port).", ("port",), group=Group.HPU,
       per_device=True),
    # health and parity signals (issue 11): HBM row replacement, ECC detail, throttle time, PCIe link, limits
    _m("gaudi_hpu_memory_utilization_ratio", G, "ratio", "Memory-interface utilisation, 0-1, as reported by the "
       "driver (HLML only).", group=Group.HPU, per_device=True),
    _m("gaudi_hpu_ecc_volatile_errors_total", C, "", "ECC errors since the last driver load (volatile), by type "
       "(corrected, uncorrected).", ("type",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_ecc_enabled", G, "", "1 if ECC is enabled: setting=current, or after the next reset "
       "(setting=pending).", ("setting",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_hbm_replaced_rows", G, "", "HBM rows replaced, by cause (multiple_single_bit, double_bit).",
       ("cause",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_hbm_row_replacement_pending", G, "", "1 while HBM row replacements wait for a device reset.",
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_throttle_seconds_total", C, "seconds", "Time clocks were held back, by reason (power, thermal), "
       "from the driver's violation status (read as nanoseconds, NVML's convention), kept monotonic across driver "
       "reloads; rate() is the share of time lost.", ("reason",), group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_pcie_link_generation", G, "", "PCIe link generation the device trained at now.",
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_pcie_link_max_generation", G, "", "Highest PCIe link generation the device supports.",
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_pcie_link_width", G, "", "PCIe link width (lanes) the device trained at now.", group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_pcie_link_max_width", G, "", "Widest PCIe link (lanes) the device supports.", group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_pcie_throughput_bytes_per_second", G, "bytes_per_second", "PCIe throughput by direction (tx, "
       "rx) over the driver's sample window (assumed KiB/s from HLML, converted).", ("direction",),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_temperature_threshold_celsius", G, "celsius", "Temperature thresholds (shutdown, slowdown, "
       "memory_max, aip_max).", ("threshold",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_power_default_limit_watts", G, "watts", "Default power management limit.", group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_power_min_limit_watts", G, "watts", "Lowest power limit the device accepts.", group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_power_max_limit_watts", G, "watts", "Highest power limit the device accepts.", group=Group.HPU,
       per_device=True),
    _m("gaudi_hpu_clock_max_hertz", G, "hertz", "Maximum clock frequency by clock domain.", ("clock",),
       group=Group.HPU, per_device=True),
    _m("gaudi_hpu_nic_ports", G, "", "NIC ports by link state (up, down): the per-device summary, always exported "
       "(per-port series with --collector.hpu.nic-ports=per-port).", ("state",), group=Group.HPU, per_device=True),
    _m("gaudi_hpu_read_errors_total", C, "", "Failed reads of an HPU (driver error, garbled hl-smi line, lost "
       "device), 0 from the HPU's first read; hpu=\"unknown\" counts errors that name no known HPU.",
       ("hpu", "uuid"), group=Group.HPU),
    # --- host
    _m("gaudi_host_cpu_utilization_ratio", G, "ratio", "Host CPU utilisation, 0-1, since the previous tick.",
       group=Group.HOST),
    _m("gaudi_host_memory_used_bytes", G, "bytes", "Host memory in use (total - available).", group=Group.HOST),
    _m("gaudi_host_memory_total_bytes", G, "bytes", "Host memory size.", group=Group.HOST),
    # --- prices and cost
    _m("gaudi_node_price_usd_per_hour", G, "", "Price paid for this node now, with where it comes from.",
       ("source", "instance_type", "region", "zone", "lifecycle"), group=Group.COST),
    _m("gaudi_node_on_demand_price_usd_per_hour", G, "", "On-demand price of this node's type, the reference for "
       "spot savings.", ("source",), group=Group.COST),
    _m("gaudi_node_cost_usd_total", C, "", "Cost of this node since the exporter started: price x time, "
       "integrated tick by tick.", group=Group.COST),
    _m("gaudi_hpu_cost_usd_total", C, "", "This HPU's share of the node cost.", group=Group.COST, per_device=True),
    _m("gaudi_hpu_idle_cost_usd_total", C, "", "This HPU's cost share x (1 - utilisation): money spent while idle.",
       group=Group.COST, per_device=True),
    _m("gaudi_energy_cost_usd_total", C, "", "Electricity cost of the HPUs' energy x PUE at the configured price.",
       group=Group.COST),
    _m("gaudi_spot_savings_usd_total", C, "", "(on-demand price - price paid) x time on spot nodes.",
       group=Group.COST),
    _m("gaudi_cost_efficiency_ratio", G, "ratio", "min(1, (0.7 x utilisation + 0.3 x HBM used/total) / target), "
       "averaged over the node's HPUs.", group=Group.COST),
    _m("gaudi_pricing_last_success_timestamp_seconds", G, "seconds", "Unix time of the last good price from the "
       "source.", ("source",), group=Group.COST),
    _m("gaudi_pricing_errors_total", C, "", "Failed price look-ups by source and reason.", ("source", "reason"),
       group=Group.COST),
    _m("gaudi_checkpoint_last_timestamp_seconds", G, "seconds", "Unix time of the last checkpoint a training job "
       "reported (file mtime or POST /api/v1/checkpoint).", group=Group.COST),
    _m("gaudi_cost_at_risk_usd", G, "", "Node cost accrued since the last checkpoint (since the exporter started "
       "while no checkpoint is known): what an interruption would throw away.", group=Group.COST),
    # --- spot notices (IMDS)
    _m("gaudi_spot_interruption_pending", G, "", "1 while EC2 has scheduled an interruption of this spot node.",
       group=Group.SPOT),
    _m("gaudi_spot_interruption_time_seconds", G, "seconds", "Unix time of the scheduled interruption (0 if none).",
       group=Group.SPOT),
    _m("gaudi_spot_rebalance_recommended", G, "", "1 while EC2 recommends rebalancing away from this spot node.",
       group=Group.SPOT),
    # --- market watcher
    _m("gaudi_spot_market_price_usd_per_hour", G, "", "Current spot price by region, zone, type and product.",
       ("region", "zone", "instance_type", "product", "source"), group=Group.MARKET),
    _m("gaudi_on_demand_market_price_usd_per_hour", G, "", "On-demand price by region and type.",
       ("region", "instance_type", "source"), group=Group.MARKET),
    _m("gaudi_market_errors_total", C, "", "Failed market look-ups by region and reason.", ("region", "reason"),
       group=Group.MARKET),
    _m("gaudi_market_last_success_timestamp_seconds", G, "seconds", "Unix time of the last good market refresh.",
       ("source",), group=Group.MARKET),
    # --- Kubernetes / HPC attribution
    _m("gaudi_namespace_cost_usd_total", C, "", "HPU cost attributed to a namespace on this node, summed over its "
       "pods; survives pod churn.", ("namespace",), group=Group.KUBERNETES),
    _m("gaudi_unallocated_cost_usd_total", C, "", "HPU cost of devices no pod held.", group=Group.KUBERNETES),
    # --- training side (exposed by the training process, not the node exporter)
    _m("gaudi_training_info", INFO, "", "A training run's settings.", ("job", "batch_size", "precision", "model"),
       group=Group.TRAINING),
    _m("gaudi_training_samples_total", C, "", "Samples processed.", ("job",), group=Group.TRAINING),
    _m("gaudi_training_tokens_total", C, "", "Tokens processed.", ("job",), group=Group.TRAINING),
    _m("gaudi_training_steps_total", C, "", "Optimizer steps.", ("job",), group=Group.TRAINING),
    _m("gaudi_training_step_duration_seconds", H, "seconds", "Wall time of a training step.", ("job",),
       group=Group.TRAINING),
    _m("gaudi_training_hpu_memory_allocated_bytes", G, "bytes", "HPU memory the training process holds "
       "(habana_frameworks.torch).", ("job",), group=Group.TRAINING),
    _m("gaudi_training_hpu_memory_max_allocated_bytes", G, "bytes", "Peak HPU memory of the training process.",
       ("job",), group=Group.TRAINING),
    _m("gaudi_training_checkpoint_last_timestamp_seconds", G, "seconds", "Unix time of the job's last checkpoint.",
       ("job",), group=Group.TRAINING),
]

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
if len(METRICS) != len(_ALL):  # pragma: no cover - guards the list above
    raise RuntimeError("duplicate metric name in the catalogue")


def get(name: str) -> Metric:
    return METRICS[name]


@dataclass(frozen=True)
class Recorded:
    """A recording rule's output series; the rules in alerts/ define them, dashboards read them."""

    name: str
    help: str


RECORDED: dict[str, Recorded] = {r.name: r for r in [
    Recorded("node:gaudi_node_cost_usd_per_hour:rate5m", "Node cost rate, USD per hour."),
    Recorded("cluster:gaudi_node_cost_usd_per_hour:rate5m", "Cost rate of all Gaudi nodes, USD per hour."),
    Recorded("namespace:gaudi_namespace_cost_usd_per_hour:rate5m", "Cost rate per namespace, USD per hour "
             "(unallocated cost under namespace=\"\")."),
    Recorded("node:gaudi_idle_cost_ratio:rate1h", "Share of the HPU cost spent idle over the last hour."),
    Recorded("cluster:gaudi_idle_cost_ratio:rate1h", "Fleet share of HPU cost spent idle over the last hour."),
    Recorded("node:gaudi_hpu_utilization_ratio:avg", "Mean HPU utilisation of a node."),
    Recorded("cluster:gaudi_hpu_utilization_ratio:avg", "Mean HPU utilisation of the fleet."),
    Recorded("cluster:gaudi_hpu_memory_used_bytes:sum", "HBM in use on the fleet's HPUs, bytes."),
    Recorded("cluster:gaudi_hpu_memory_total_bytes:sum", "HBM size of the fleet's HPUs, bytes."),
    Recorded("node:gaudi_cost_efficiency_ratio:avg5m", "Efficiency score of a node over 5 minutes."),
    Recorded("cluster:gaudi_cost_efficiency_ratio:avg5m", "Efficiency score of the fleet over 5 minutes."),
    Recorded("node:gaudi_spot_savings_usd_per_hour:rate5m", "Spot savings rate, USD per hour."),
    Recorded("cluster:gaudi_spot_savings_usd_per_hour:rate5m", "Fleet spot savings rate, USD per hour."),
    Recorded("job:gaudi_training_samples:rate5m", "Training throughput, samples per second."),
    Recorded("job:gaudi_training_cost_usd_per_sample:rate5m", "Cost of one training sample, USD."),
    Recorded("cluster:gaudi_exporter_targets:count", "Exporter scrape targets per cluster (absence is checked "
             "per cluster)."),
    # 5-minute increments (group gaudi-exporter.increments, evaluated every 5m): every long window sums these.
    Recorded("node:gaudi_node_cost_usd:increase5m", "Node cost over each 5 minutes, USD."),
    Recorded("node:gaudi_hpu_cost_usd:increase5m", "HPU cost of a node over each 5 minutes, USD."),
    Recorded("node:gaudi_hpu_idle_cost_usd:increase5m", "Idle HPU cost of a node over each 5 minutes, USD."),
    Recorded("node:gaudi_hpu_busy_seconds:increase5m", "Busy HPU-seconds of a node over each 5 minutes."),
    Recorded("node:gaudi_hpu_up_seconds:sum5m", "HPU-seconds a node's HPUs were up over each 5 minutes."),
    Recorded("node:gaudi_hpu_idle_seconds:sum5m", "HPU-seconds a node's HPUs were up and not busy over each 5 "
             "minutes."),
    Recorded("node:gaudi_spot_savings_usd:increase5m", "Spot savings of a node over each 5 minutes, USD."),
    Recorded("node:gaudi_hpu_throttled_seconds:sum5m", "Throttled HPU-seconds of a node by reason over each 5 "
             "minutes."),
    Recorded("hpu:gaudi_hpu_ecc_errors:increase5m", "ECC errors of an HPU by type over each 5 minutes (pod labels "
             "summed away)."),
    Recorded("node:gaudi_hpu_ecc_errors:increase5m", "ECC errors of a node's HPUs by type over each 5 minutes."),
    Recorded("namespace:gaudi_namespace_cost_usd:increase5m", "Cost per namespace over each 5 minutes, USD "
             "(unallocated cost under namespace=\"\")."),
    Recorded("cluster:gaudi_node_cost_usd:increase5m", "Cost of all Gaudi nodes over each 5 minutes, USD."),
    Recorded("cluster:gaudi_hpu_cost_usd:increase5m", "HPU cost of the fleet over each 5 minutes, USD."),
    Recorded("cluster:gaudi_hpu_idle_cost_usd:increase5m", "Idle HPU cost of the fleet over each 5 minutes, USD."),
    Recorded("cluster:gaudi_spot_savings_usd:increase5m", "Spot savings of the fleet over each 5 minutes, USD."),
    Recorded("cluster:gaudi_hpu_busy_seconds:increase5m", "Busy HPU-seconds of the fleet over each 5 minutes."),
    Recorded("cluster:gaudi_hpu_up_seconds:sum5m", "HPU-seconds the fleet's HPUs were up over each 5 minutes."),
    Recorded("cluster:gaudi_hpu_idle_seconds:sum5m", "HPU-seconds the fleet's HPUs were up and not busy over each 5 "
             "minutes."),
]}


def all_names() -> set[str]:
    """Every exposed series name a rule or a panel may use (histograms add their suffixes)."""
    names: set[str] = set()
    for m in METRICS.values():
        names.add(m.name)
        if m.kind is Kind.HISTOGRAM:
            names.update({m.name + "_bucket", m.name + "_sum", m.name + "_count"})
    return names | set(RECORDED)
