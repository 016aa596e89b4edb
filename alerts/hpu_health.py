"""Alerts on the HPU health signals operators page on (issue 11): HBM row replacement waiting for a reset, a PCIe
link trained below what the card supports, a growing share of time lost to clock throttling, and NIC ports down
from the per-device summary (the default --collector.hpu.nic-ports=summary).

Per-series comparisons: no aggregation, so each alert keeps the device's labels (node, hpu, uuid, ...); the
summary alert joins the per-port series on (node, hpu, uuid) only to stay quiet where GaudiHpuNicPortDown speaks.
"""

from __future__ import annotations

from alerts.rules import HPU, _alert, _n, _num, _pct, _sel, _t

# the labels that name one device across scrapes (instance is the exporter pod, which changes on a restart);
# with the cluster label (thresholds cluster_label) first, so a global view never matches another cluster's node
DEVICE = "node, hpu, uuid"
DOWN = 'state="down"'


def hpu_health_alerts(t: dict) -> list[dict]:
    base = t["exporter_selector"]
    s = _sel(base)
    h = t["hpu_health"]
    width, max_width = _n("gaudi_hpu_pcie_link_width"), _n("gaudi_hpu_pcie_link_max_width")
    gen, max_gen = _n("gaudi_hpu_pcie_link_generation"), _n("gaudi_hpu_pcie_link_max_generation")
    w = h["throttle_share_window"]
    device = f"{t['cluster_label']}, {DEVICE}"
    return [
        _alert(t, "GaudiHpuRowReplacementPending", f"{_n('gaudi_hpu_hbm_row_replacement_pending')}{s} == 1",
               "warning", "health", "A Gaudi HPU has HBM row replacements waiting for a reset.",
               _t(HPU + " has replaced HBM rows that only take effect after a device reset (pending for [[for]]). "
                  "Drain the node and reset the device at the next opportunity.",
                  **{"for": h["row_replacement_pending_for"]}),
               h["row_replacement_pending_for"]),
        # Width does not change at run time: any shortfall is a card that trained narrow. The generation may drop
        # to save power while idle (as on other accelerators), so it counts only while the device is busy.
        _alert(t, "GaudiHpuPcieLinkDegraded",
               (f"{width}{s} < {max_width}{s}\n"
                f"or\n"
                f"({gen}{s} < {max_gen}{s})\n"
                f"  and {_n('gaudi_hpu_utilization_ratio')}{s} > {_num(h['pcie_generation_busy_utilization'])}"),
               "warning", "health", "A Gaudi HPU's PCIe link runs below what the card supports.",
               _t(HPU + " has trained its PCIe link below its maximum (width {{ with printf \"[[w]]{uuid=%q}\" "
                  "$labels.uuid | query }}x{{ . | first | value }}{{ end }}, generation {{ with printf "
                  "\"[[g]]{uuid=%q}\" $labels.uuid | query }}{{ . | first | value }}{{ end }}) for [[for]]: "
                  "host transfers run at a fraction of their speed. Reseat or replace the card or riser.",
                  w=width, g=gen, **{"for": h["pcie_link_degraded_for"]}),
               h["pcie_link_degraded_for"]),
        _alert(t, "GaudiHpuThrottleTimeHigh",
               f"rate({_n('gaudi_hpu_throttle_seconds_total')}{s}[{w}]) > {_num(h['throttle_share_max'])}",
               "warning", "health", "A Gaudi HPU loses a growing share of its time to clock throttling.",
               _t(HPU + " had its clocks held back for {{ $labels.reason }} during {{ $value | humanizePercentage }} "
                  "of the last [[w]] (limit [[max]]): jobs on it run slower.",
                  w=w, max=_pct(h["throttle_share_max"])),
               h["throttle_share_for"]),
        _alert(t, "GaudiHpuNicPortsDown",
               (f"{_n('gaudi_hpu_nic_ports')}{_sel(base, DOWN)} > {_num(h['nic_ports_down_max'])}\n"
                f"unless on ({device})\n"
                f"count by ({device}) ({_n('gaudi_hpu_nic_port_up')}{s})"),
               "warning", "health", "NIC ports of a Gaudi HPU are down.",
               _t("{{ $value | printf \"%.0f\" }} NIC ports of " + HPU + " have been down for [[for]] (more than "
                  "[[max]] expected down); collective communication over them fails or slows. Run with "
                  "--collector.hpu.nic-ports=per-port on this node to see which.",
                  max=_num(h["nic_ports_down_max"]), **{"for": h["nic_ports_down_for"]}),
               h["nic_ports_down_for"]),
    ]
