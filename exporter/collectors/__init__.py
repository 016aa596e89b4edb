"""Tick collectors, node_exporter style: one file each, enabled with --collector.NAME / --no-collector.NAME.

A collector reads one source and returns a result object; the loop times it, records success, and isolates its
failure from the others. Collectors never build metrics themselves: exposition.py renders every result.
"""

from __future__ import annotations

from typing import Protocol


class TickCollector(Protocol):
    name: str

    def collect(self, now: float, partial: dict[str, object]) -> object:
        """Read the source; raise on failure (the loop marks the collector failed and goes on).

        ``partial`` holds the results of the collectors that ran before this one in the same tick.
        """


# name -> (enabled by default, help)
COLLECTORS: dict[str, tuple[bool, str]] = {
    "hpu": (True, "HPU telemetry from the device backend"),
    "host": (True, "host CPU and memory (psutil)"),
    "pricing": (True, "the node's price from the price source"),
    "spot": (True, "EC2 spot interruption and rebalance notices (spot nodes only)"),
    "checkpoint": (True, "last checkpoint of a training job (file mtime or POST /api/v1/checkpoint)"),
    "kubernetes": (False, "pod/namespace/container of each HPU from the kubelet pod-resources API"),
    "hpc": (False, "job id of each HPU from a directory of per-device files (Slurm-style clusters)"),
}
