"""Which pod holds each HPU, from the kubelet pod-resources API; HPC mode reads job ids from files instead."""

from __future__ import annotations

import logging
from pathlib import Path

from exporter.catalogue import ATTRIBUTION_LABELS, HPC_LABELS
from exporter.loop import Attribution, PartialFailure
from exporter.readings import BackendResult

log = logging.getLogger(__name__)


def _devices(partial: dict | None) -> list:
    hpu = (partial or {}).get("hpu")
    return [d.identity for d in hpu.devices] if isinstance(hpu, BackendResult) else []


class KubernetesCollector:
    """Owners from the kubelet each tick. A kubelet blip (restart, timeout) keeps the last owners for a short
    grace, so a pod's cost does not jump to "unallocated" for a tick; past it, series carry empty labels."""

    name = "kubernetes"
    labels = ATTRIBUTION_LABELS
    grace_seconds = 30.0

    def __init__(self, client: object, resource_names: list[str]) -> None:
        self.client = client  # exporter.kubernetes.client.PodResourcesClient
        self.resource_names = tuple(resource_names)
        self._last: Attribution | None = None
        self._last_at = 0.0
        self._unmatched: tuple[str, ...] = ()

    def collect(self, now: float, partial: dict | None = None) -> Attribution:
        from exporter.kubernetes.attribution import match_devices

        try:
            allocations = self.client.list()
        except Exception as e:
            if self._last is not None and now - self._last_at <= self.grace_seconds:
                raise PartialFailure(f"{e} (keeping the owners of {now - self._last_at:.0f}s ago)", self._last) from e
            raise
        found = match_devices(_devices(partial), allocations, self.resource_names)
        if found.unmatched_ids != self._unmatched:
            self._unmatched = found.unmatched_ids
            if found.unmatched_ids:
                log.warning("kubelet lists HPU ids that match no device of this node (checked uuid, serial, PCI "
                            "bus id, index): %s", ", ".join(found.unmatched_ids))
        self._last = Attribution(self.labels, {k: (o.namespace, o.pod, o.container)
                                               for k, o in found.owners.items()})
        self._last_at = now
        return self._last


class HpcCollector:
    name = "hpc"
    labels = HPC_LABELS

    def __init__(self, job_dir: str) -> None:
        self.job_dir = Path(job_dir)

    def collect(self, now: float, partial: dict | None = None) -> Attribution:
        from exporter.kubernetes.hpc import read_hpc_jobs

        if not self.job_dir.is_dir():
            raise FileNotFoundError(f"hpc.job_dir {self.job_dir} is not a directory")
        jobs = read_hpc_jobs(self.job_dir, _devices(partial))
        return Attribution(self.labels, {k: (job,) for k, job in jobs.items()})
