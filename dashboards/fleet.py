"""HPU fleet: health and load of every node and device, with drill-down from a node to its devices."""

from __future__ import annotations

from dashboards import panels as P
from dashboards.panels import DEVICE_SEL, NODE_SEL, Q, metric
from dashboards.settings import Settings

UID = "gaudi-fleet"
TITLE = "Gaudi / HPU fleet"

UP = metric("gaudi_hpu_up")
UTIL = metric("gaudi_hpu_utilization_ratio")
NODE_UTIL = metric("node:gaudi_hpu_utilization_ratio:avg")
MEM = metric("gaudi_hpu_memory_used_bytes")
MEM_TOTAL = metric("gaudi_hpu_memory_total_bytes")
POWER = metric("gaudi_hpu_power_watts")
POWER_LIMIT = metric("gaudi_hpu_power_limit_watts")
ENERGY = metric("gaudi_hpu_energy_joules_total")
TEMP = metric("gaudi_hpu_temperature_celsius")
THROTTLED = metric("gaudi_hpu_throttled")
ECC = metric("gaudi_hpu_ecc_errors_total")
NIC_PORTS = metric("gaudi_hpu_nic_ports")  # the per-device summary, exported in either nic-ports mode
ROWS_PENDING = metric("gaudi_hpu_hbm_row_replacement_pending")
REPLACED_ROWS = metric("gaudi_hpu_hbm_replaced_rows")
LINK_WIDTH, LINK_MAX_WIDTH = metric("gaudi_hpu_pcie_link_width"), metric("gaudi_hpu_pcie_link_max_width")
LINK_GEN, LINK_MAX_GEN = metric("gaudi_hpu_pcie_link_generation"), metric("gaudi_hpu_pcie_link_max_generation")
THROTTLE_SECONDS = metric("gaudi_hpu_throttle_seconds_total")
READ_ERRORS = metric("gaudi_hpu_read_errors_total")
ECC_INC = metric("hpu:gaudi_hpu_ecc_errors:increase5m")

DEV = "{{instance}} hpu {{hpu}}"
UTIL_STEPS = P.steps(("red", None), ("orange", 0.2), ("yellow", 0.5), ("green", 0.8))


def build(s: Settings) -> P.Board:
    to_node = [P.link("Devices of ${__field.labels.instance}", UID, node="${__field.labels.instance}")]
    to_dev = [P.link("HPU ${__field.labels.hpu} of ${__field.labels.instance}", UID,
                     node="${__field.labels.instance}", hpu="${__field.labels.hpu}")]
    health = [
        P.stat("HPUs up", P.COUNT, [Q(f"count({UP}{{{DEVICE_SEL}}} == 1) or vector(0)", "up", instant=True)],
               w=3, thresholds=P.steps(("green", None))),
        P.stat("HPUs lost", P.COUNT, [Q(f"count({UP}{{{DEVICE_SEL}}} == 0) or vector(0)", "lost", instant=True)],
               w=3, thresholds=P.steps(("green", None), ("red", 1)),
               description="Devices seen before that the driver no longer reads (gaudi_hpu_up 0)."),
        P.stat("Unallocated HPUs", P.COUNT,
               [Q(f'count({UP}{{{DEVICE_SEL}, pod=""}} == 1) or vector(0)', "unallocated", instant=True)], w=3,
               thresholds=P.steps(("green", None)),
               description="HPUs up that no pod holds: capacity to schedule on, or to shrink. GaudiHpuIdle pages "
                           "only for idle HPUs a pod holds; on nodes without Kubernetes attribution every HPU counts "
                           "here."),
        P.stat("Mean utilisation", P.RATIO, [Q(f"avg({UTIL}{{{DEVICE_SEL}}})", "mean", instant=True)],
               w=3, thresholds=UTIL_STEPS, decimals=0),
        P.stat("Throttled HPUs", P.COUNT,
               [Q(f"count(max by (instance, hpu) ({THROTTLED}{{{DEVICE_SEL}}}) == 1) or vector(0)", "throttled",
                  instant=True)], w=4, thresholds=P.steps(("green", None), ("orange", 1))),
        # The same condition as GaudiHpuEccUncorrectable (the counter since driver load above the limit), not an
        # increase over the range, which shows 0 for a count that was already non-zero when the range began.
        P.stat("HPUs with uncorrectable ECC", P.COUNT,
               [Q(f'count(max by (cluster, job, instance, hpu, uuid) ({ECC}{{{DEVICE_SEL}, type="uncorrected"}}) '
                  f"> {s.ecc_uncorrected_max:g}) or vector(0)", "ECC", instant=True)],
               w=4, thresholds=P.steps(("green", None), ("red", 1)), decimals=0,
               description="HPUs whose uncorrectable ECC count since driver load is over ecc.uncorrected_max "
                           f"({s.ecc_uncorrected_max:g}, {s.source}): the HPUs GaudiHpuEccUncorrectable fires for."),
        P.stat("NIC ports down", P.COUNT,
               [Q(f'sum({NIC_PORTS}{{{DEVICE_SEL}, state="down"}}) or vector(0)', "down", instant=True)], w=4,
               thresholds=P.steps(("green", None), ("red", 1)), decimals=0),
    ]
    util = [
        P.timeseries("Utilisation by node", P.RATIO, [Q(f"max by (instance) ({NODE_UTIL}{{{NODE_SEL}}})",
                                                          "{{instance}}")],
                     min_=0, max_=1, links=to_node, description="Click a node to show its devices only."),
        P.timeseries("Utilisation by device", P.RATIO, [Q(f"{UTIL}{{{DEVICE_SEL}}}", DEV)], min_=0, max_=1,
                     links=to_dev),
    ]
    timeline = [
        P.state_timeline("Utilisation by device (state)", P.RATIO,
                         [Q(f"max by (instance, hpu) ({UTIL}{{{DEVICE_SEL}}})", DEV)], w=24, h=8,
                         thresholds=UTIL_STEPS, min_=0, max_=1, links=to_dev),
    ]
    memory_power = [
        P.timeseries("HBM used", P.BYTES, [Q(f"{MEM}{{{DEVICE_SEL}}}", DEV)], w=8, min_=0),
        P.timeseries("HBM used share", P.RATIO, [Q(f"{MEM}{{{DEVICE_SEL}}} / {MEM_TOTAL}{{{DEVICE_SEL}}}", DEV)],
                     w=8, min_=0, max_=1),
        P.timeseries("Power", P.WATT, [Q(f"{POWER}{{{DEVICE_SEL}}}", DEV),
                                       Q(f"max by (instance) ({POWER_LIMIT}{{{DEVICE_SEL}}})",
                                         "{{instance}} limit")], w=8, min_=0),
    ]
    thermal = [
        P.bargauge("Energy by node (range)", P.KWH,
                   [Q(f"sum by (instance) (increase({ENERGY}{{{DEVICE_SEL}}}[$__range])) / 3.6e6", "{{instance}}",
                      instant=True)], w=8, h=8, thresholds=P.steps(("blue", None)), links=to_node),
        P.timeseries("AIP temperature", P.CELSIUS, [Q(f'{TEMP}{{{DEVICE_SEL}, sensor="aip"}}', DEV)], w=8,
                     thresholds=P.steps(("green", None), ("orange", s.aip_temperature_max_celsius - 10),
                                        ("red", s.aip_temperature_max_celsius)), threshold_line=True,
                     description=f"Red line: thermal.aip_temperature_max_celsius from {s.source}."),
        P.state_timeline("Throttling", P.BOOL,
                         [Q(f"max by (instance, hpu, reason) ({THROTTLED}{{{DEVICE_SEL}}})",
                            "{{instance}} hpu {{hpu}} {{reason}}")], w=8,
                         mappings=P.value_map({"0": ("no", "green"), "1": ("throttled", "red")})),
    ]
    faults = [
        P.timeseries("ECC errors (per hour, in 5-minute steps)", P.COUNT,
                     [Q(f'sum by (instance, hpu, type) ({ECC_INC}{{{NODE_SEL}, hpu=~"$hpu"}}) * 12',
                        "{{instance}} hpu {{hpu}} {{type}}")], w=8, min_=0,
                     description="The recorded 5-minute increments per HPU (pod labels summed away) x 12."),
        P.state_timeline("NIC ports down by device", P.COUNT,
                         [Q(f'sum by (instance, hpu) ({NIC_PORTS}{{{DEVICE_SEL}, state="down"}})', DEV)], w=8,
                         thresholds=P.steps(("green", None), ("red", 1)), min_=0),
        P.table("Lost devices and read errors", P.COUNT,
                [Q(f"sum by (instance, hpu) (1 - {UP}{{{DEVICE_SEL}}})"),
                 Q(f'sum by (instance, hpu) (increase({READ_ERRORS}{{{NODE_SEL}, hpu=~"$hpu"}}[$__range])) '
                   f"or sum by (instance, hpu) (0 * {UP}{{{DEVICE_SEL}}})")],
                w=8, rename={"instance": "Node", "hpu": "HPU", "Value #A": "Lost", "Value #B": "Read errors"},
                hide=("Time",), sort_by="Value #A", decimals=0,
                description="Lost = 1 for a device the driver no longer reads. Read errors over the time range."),
    ]
    # health signals (issue 11): grouped by node, not instance, so an exporter restart does not split a device
    node_dev = "{{node}} hpu {{hpu}}"
    device_health = [
        P.stat("Row replacement pending", P.COUNT,
               [Q(f"count({ROWS_PENDING}{{{DEVICE_SEL}}} == 1) or vector(0)", "pending", instant=True)],
               thresholds=P.steps(("green", None), ("orange", 1)), decimals=0,
               description="HPUs whose replaced HBM rows wait for a device reset (GaudiHpuRowReplacementPending)."),
        P.stat("PCIe links below max width", P.COUNT,
               [Q(f"count({LINK_WIDTH}{{{DEVICE_SEL}}} < {LINK_MAX_WIDTH}{{{DEVICE_SEL}}}) or vector(0)", "narrow",
                  instant=True)], thresholds=P.steps(("green", None), ("red", 1)), decimals=0,
               description="A card that trained at a lower width moves host data at a fraction of its speed."),
        P.stat("PCIe links below max generation", P.COUNT,
               [Q(f"count({LINK_GEN}{{{DEVICE_SEL}}} < {LINK_MAX_GEN}{{{DEVICE_SEL}}}) or vector(0)", "slow",
                  instant=True)], thresholds=P.steps(("green", None), ("orange", 1)), decimals=0,
               description="Idle links may drop their generation to save power; GaudiHpuPcieLinkDegraded counts "
                           "busy devices only."),
        P.table("HBM rows replaced", P.COUNT,
                [Q(f"max by (node, hpu, cause) ({REPLACED_ROWS}{{{DEVICE_SEL}}})", instant=True)], w=6, h=4,
                rename={"node": "Node", "hpu": "HPU", "cause": "Cause", "Value": "Rows"}, hide=("Time",),
                sort_by="Value", decimals=0),
        P.timeseries("Share of time throttled", P.RATIO,
                     [Q(f"max by (node, hpu, reason) (rate({THROTTLE_SECONDS}{{{DEVICE_SEL}}}[$__rate_interval]))",
                        node_dev + " {{reason}}")], w=6, h=4, min_=0, max_=1,
                     description="Time the clocks were held back by power or thermal limits "
                                 "(gaudi_hpu_throttle_seconds_total); GaudiHpuThrottleTimeHigh fires on it."),
    ]
    return P.dashboard(UID, TITLE, "Load, memory, power, temperature and faults of every HPU; click a node or a "
                       "device to drill down. Per-device panels show the selected nodes (the first by default, "
                       "not the whole fleet) over the last hour.",
                       [health, util, timeline, memory_power, thermal, faults, device_health],
                       annotations=P.spot_annotations(), time_from="now-1h", node_all=False)
