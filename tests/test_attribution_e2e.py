"""Attribution through the whole node pipeline: a real gRPC kubelet on a unix socket, the loop, the cost engine and
the exposition. Pods start, move and end; counters only grow; namespaces add up to the node minus unallocated."""

from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.backends.simulated import SimulatedBackend
from exporter.collectors.hpu import HpuCollector
from exporter.collectors.kubernetes import KubernetesCollector
from exporter.collectors.pricing import PricingCollector
from exporter.kubernetes.client import PodResourcesClient
from exporter.loop import Loop
from exporter.pricing.base import FixedSource, NodeIdentity, Price
from tests.fakes.kubelet import FakeKubelet, pod, short_socket_path

GAUDI = "habana.ai/gaudi"
SIM = "SIM-HL-325L-0000-{:02d}"  # uuids of the simulated devices (seed 0)


def parse(text: bytes) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def by_name(samples: dict, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def sock():
    path = short_socket_path()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def make_loop(sock: str, clock) -> Loop:
    backend = SimulatedBackend(devices=8, seed=0, interval=5.0)
    k8s = KubernetesCollector(PodResourcesClient(sock, timeout=2), [GAUDI])
    price = PricingCollector(FixedSource("static", Price(36.0, "static", 0.0)), NodeIdentity())
    return Loop([HpuCollector(backend), k8s, price], interval=5.0, version="t", backend="simulated",
                attribution_labels=k8s.labels, clock=clock)


def test_pods_move_and_counters_follow(sock):
    t = [1000.0]
    loop = make_loop(sock, lambda: t[0])
    history: dict[tuple, float] = {}

    def tick() -> dict:
        out = parse(loop.tick().text)
        for key, value in out.items():
            if key[0].endswith("_total"):
                assert value >= history.get(key, 0.0), f"{key} decreased"
                history[key] = value
        t[0] += 5
        return out

    with FakeKubelet(sock) as kubelet:
        # phase 1: a container with two HPUs (ids as serials and uuids), one by PCI bus id, one by index
        kubelet.set_pods([
            pod("team-a", "train-0", {"trainer": {GAUDI: ["SIM00000000", SIM.format(1)]}}),
            pod("team-b", "eval-0", {"eval": {GAUDI: ["0000:39:00.0"]}}),
            pod("team-b", "eval-1", {"eval": {GAUDI: ["3"]}}),
        ])
        for _ in range(10):
            s = tick()
        util = by_name(s, "gaudi_hpu_utilization_ratio")
        owners = {dict(k)["hpu"]: (dict(k)["namespace"], dict(k)["pod"], dict(k)["container"]) for k in util}
        assert owners["0"] == owners["1"] == ("team-a", "train-0", "trainer")
        assert owners["2"] == ("team-b", "eval-0", "eval")
        assert owners["3"] == ("team-b", "eval-1", "eval")
        assert owners["7"] == ("", "", "")
        assert len(util) == 8

        # phase 2: eval-0 moves from HPU 2 to HPU 5, train-0 ends
        kubelet.set_pods([
            pod("team-b", "eval-0", {"eval": {GAUDI: ["SIM00000005"]}}),
            pod("team-b", "eval-1", {"eval": {GAUDI: ["3"]}}),
        ])
        for _ in range(10):
            s = tick()
        cost = by_name(s, "gaudi_hpu_cost_usd_total")
        hpus_of_eval0 = {dict(k)["hpu"] for k in cost if dict(k)["pod"] == "eval-0"}
        assert hpus_of_eval0 == {"5"}  # the old (HPU 2, eval-0) series ended: no stale series
        assert not any(dict(k)["pod"] == "train-0" for k in cost)

        # phase 3: the kubelet breaks: the collector is marked failed at once; the last owners are kept for a
        # 30 s grace (a kubelet restart), then device metrics keep flowing without pod labels
        kubelet.fail_with(__import__("grpc").StatusCode.UNAVAILABLE)
        s = tick()
        assert by_name(s, "gaudi_exporter_collector_success")[(("collector", "kubernetes"),)] == 0
        util = by_name(s, "gaudi_hpu_utilization_ratio")
        assert {dict(k)["pod"] for k in util} == {"eval-0", "eval-1", ""}
        for _ in range(7):
            s = tick()
        util = by_name(s, "gaudi_hpu_utilization_ratio")
        assert len(util) == 8 and all(dict(k)["pod"] == "" for k in util)

    node = by_name(s, "gaudi_node_cost_usd_total")[()]
    namespaces = by_name(s, "gaudi_namespace_cost_usd_total")
    unallocated = by_name(s, "gaudi_unallocated_cost_usd_total")[()]
    assert {dict(k)["namespace"] for k in namespaces} == {"team-a", "team-b"}
    assert sum(namespaces.values()) == pytest.approx(node - unallocated, rel=1e-9)
    assert node == pytest.approx(36.0 * 27 * 5 / 3600, rel=1e-9)  # 28 ticks: 27 intervals of 5 s


def test_an_absent_socket_marks_the_collector_failed_and_devices_keep_flowing(sock):
    loop = make_loop(sock, lambda: 1000.0)
    s = parse(loop.tick().text)
    assert by_name(s, "gaudi_exporter_collector_success")[(("collector", "kubernetes"),)] == 0
    assert len(by_name(s, "gaudi_hpu_utilization_ratio")) == 8


def test_cardinality_with_and_without_attribution(sock):
    """Series per node for 8 HPUs; printed for the closing note (run with -s)."""
    with FakeKubelet(sock) as kubelet:
        kubelet.set_pods([pod("ml", f"p{i}", {"c": {GAUDI: [SIM.format(i)]}}) for i in range(8)])
        t = [1000.0]
        with_attr = make_loop(sock, lambda: t[0])
        price = PricingCollector(FixedSource("static", Price(36.0, "static", 0.0)), NodeIdentity())
        plain = Loop([HpuCollector(SimulatedBackend(devices=8, seed=0)), price], interval=5.0, version="t",
                     backend="simulated", clock=lambda: t[0])
        for _ in range(2):
            a, b = parse(with_attr.tick().text), parse(plain.tick().text)
            t[0] += 5
    per_hpu_a = sum(1 for k in a if k[0].startswith("gaudi_hpu"))
    per_hpu_b = sum(1 for k in b if k[0].startswith("gaudi_hpu"))
    print(f"\nseries for 8 HPUs: gaudi_hpu_* {per_hpu_b} without attribution, {per_hpu_a} with; "
          f"all series {len(b)} vs {len(a)}")
    # attribution adds labels, not series (one pod per HPU); the node gains its namespace and unallocated counters
    assert per_hpu_a == per_hpu_b
    assert len(a) - len(b) == 2 + 2  # namespace + unallocated counters, collector duration + success


def test_hpc_mode_labels_devices_with_their_job_from_files(tmp_path):
    """Slurm-style: the daemon reads <dir>/<index> each tick; series carry `hpc_job`, which moves with the files."""
    from tests.support.procs import exporter, wait_for

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "0").write_text("4711\n")
    (jobs / "1").write_text("4711\n")
    (jobs / "5").write_text("")  # released by the epilog
    args = ["--backend", "simulated", "--interval", "1", "--pricing.static.usd-per-hour", "19.92",
            "--collector.hpc", "--hpc.job-dir", str(jobs)]
    import requests

    with exporter(args) as (_, base):
        def owners() -> dict[str, str]:
            s = parse(requests.get(base + "/metrics", timeout=5).content)
            return {dict(k)["hpu"]: dict(k)["hpc_job"] for k in by_name(s, "gaudi_hpu_utilization_ratio")}

        got = wait_for(lambda: (o := owners()) and o.get("0") == "4711" and o, 10, what="job labels")
        assert got == {"0": "4711", "1": "4711", **{str(i): "" for i in range(2, 8)}}
        (jobs / "1").write_text("4712\n")
        wait_for(lambda: owners().get("1") == "4712", 10, what="the new job on HPU 1")
        s = parse(requests.get(base + "/metrics", timeout=5).content)
    cost_jobs = {dict(k)["hpc_job"] for k in by_name(s, "gaudi_hpu_cost_usd_total")}
    assert cost_jobs == {"4711", "4712", ""}  # HPU 0 still on 4711, HPU 1 moved to 4712, the rest idle
    assert by_name(s, "gaudi_exporter_collector_success")[(("collector", "hpc"),)] == 1
