"""Which pod holds each HPU, from the kubelet pod-resources API; HPC mode reads job ids from files instead."""

from __future__ import annotations

from pathlib import Path

from exporter.catalogue import ATTRIBUTION_LABELS, HPC_LABELS
from exporter.loop import Attribution
from exporter.readings import BackendResult


def _devices(partial: dict | None) -> list:
    hpu = (partial or {}).get("hpu")
    return [d.identity for d in hpu.devices] if isinstance(hpu, BackendResult) else []


class KubernetesCollector:
    name = "kubernetes"
    labels = ATTRIBUTION_LABELS

    def __init__(self, client: object, resource_names: list[str]) -> None:
        self.client = client  # exporter.kubernetes.client.PodResourcesClient
        self.resource_names = tuple(resource_names)

    def collect(self, now: float, partial: dict | None = None) -> Attribution:
        from exporter.kubernetes.attribution import attribute

        owners = attribute(_devices(partial), self.client.list(), self.resource_names)
        return Attribution(self.labels, {k: (o.namespace, o.pod, o.container) for k, o in owners.items()})


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
