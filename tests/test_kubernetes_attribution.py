"""Pod and job attribution of HPUs, against a real gRPC kubelet endpoint on a unix socket."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from exporter.kubernetes.attribution import Owner, attribute, match_devices
from exporter.kubernetes.client import Allocation, AttributionError, PodResourcesClient
from exporter.kubernetes.hpc import read_hpc_jobs
from exporter.readings import DeviceIdentity, DeviceReading
from tests.fakes.kubelet import GAUDI, FakeKubelet, pod, short_socket_path

# Eight HPUs of one node, as a backend would identify them. Identifiers are made up (simulated devices).
DEVICES = [
    DeviceIdentity(index=0, uuid="sim-uuid-0000", serial="SIMSN0000", pci_bus_id="0000:19:00.0"),
    DeviceIdentity(index=1, uuid="sim-uuid-aaaa-0001", serial="SIMSN0001", pci_bus_id="0000:1a:00.0"),
    DeviceIdentity(index=2, uuid="sim-uuid-0002", serial="SIMSN0002", pci_bus_id="0000:b3:00.0"),
    DeviceIdentity(index=3, uuid="sim-uuid-0003", serial="SIMSN0003", pci_bus_id="0000:b4:00.0"),
    DeviceIdentity(index=4, uuid="sim-uuid-0004", serial="SIMSN0004", pci_bus_id="0000:cc:00.0"),
    DeviceIdentity(index=5, uuid="", serial="SIMSN0005", pci_bus_id="0000:cd:00.0"),  # backend read no uuid
    DeviceIdentity(index=6, uuid="sim-uuid-0006", serial="SIMSN0006", pci_bus_id="0000:e1:00.0", minor=6),
    DeviceIdentity(index=7, uuid="sim-uuid-0007", serial="SIMSN0007", pci_bus_id="0000:e2:00.0"),
]


@pytest.fixture
def sock():
    path = short_socket_path()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.fixture
def kubelet(sock):
    with FakeKubelet(sock) as k:
        yield k


def test_pods_start_move_and_end(kubelet, sock):
    client = PodResourcesClient(sock, timeout=5)
    # Tick 1: every ID format a device plugin may advertise, one container with two devices, a NIC resource
    # that is not an HPU, a CPU-only pod, and a device of another node.
    kubelet.set_pods(
        [
            pod("team-a", "train-0", {"trainer": {GAUDI: ["SIMSN0000", "SIM-UUID-AAAA-0001"]}}),
            pod("team-b", "eval-0", {"eval": {GAUDI: ["B3:00.0"]}}),
            pod("team-b", "notebook", {"jupyter": {GAUDI: ["3"]}}),
            pod("team-c", "router", {"net": {"habana.ai/nic": ["4"]}}),
            pod("team-c", "batch", {"worker": {GAUDI: ["hl5"]}, "log": {"cpu-only": []}}),
            pod("team-d", "infer", {"server": {GAUDI: ["accel6", "SIMSN-OF-ANOTHER-NODE"]}}),
            pod("kube-system", "coredns", {"coredns": {}}),
        ]
    )
    assert attribute(DEVICES, client.list()) == {
        "sim-uuid-0000": Owner("team-a", "train-0", "trainer"),
        "sim-uuid-aaaa-0001": Owner("team-a", "train-0", "trainer"),
        "sim-uuid-0002": Owner("team-b", "eval-0", "eval"),
        "sim-uuid-0003": Owner("team-b", "notebook", "jupyter"),
        "index-5": Owner("team-c", "batch", "worker"),
        "sim-uuid-0006": Owner("team-d", "infer", "server"),
    }
    result = match_devices(DEVICES, client.list())
    assert result.unmatched_ids == ("SIMSN-OF-ANOTHER-NODE",)

    # Tick 2: train-0 was rescheduled as train-1 on other devices (PCI bus ids with an 8-digit domain this
    # time), eval-0 ended, the notebook kept its device.
    kubelet.set_pods(
        [
            pod("team-a", "train-1", {"trainer": {GAUDI: ["00000000:E2:00.0", "0000:19:00.0"]}}),
            pod("team-b", "notebook", {"jupyter": {GAUDI: ["3"]}}),
        ]
    )
    assert attribute(DEVICES, client.list()) == {
        "sim-uuid-0007": Owner("team-a", "train-1", "trainer"),
        "sim-uuid-0000": Owner("team-a", "train-1", "trainer"),
        "sim-uuid-0003": Owner("team-b", "notebook", "jupyter"),
    }

    # Tick 3: everything ended.
    kubelet.set_pods([])
    assert attribute(DEVICES, client.list()) == {}
    assert kubelet.calls == 4
    client.close()


def test_list_reports_each_containers_devices(kubelet, sock):
    kubelet.set_pods(
        [
            pod("ml", "job-0", {"a": {GAUDI: ["SIMSN0001", "SIMSN0002"], "habana.ai/nic": ["7"]}, "b": {}}),
            pod("ml", "job-1", {"c": {GAUDI: ["sim-uuid-0004"]}}, numa_node=None),
        ]
    )
    with PodResourcesClient(sock) as client:
        assert client.list() == [
            Allocation("ml", "job-0", "a", GAUDI, ("SIMSN0001", "SIMSN0002")),
            Allocation("ml", "job-0", "a", "habana.ai/nic", ("7",)),
            Allocation("ml", "job-1", "c", GAUDI, ("sim-uuid-0004",)),
        ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_reads_a_response_encoded_with_upstream_field_numbers(kubelet, sock):
    """Wire bytes built by hand from k8s.io/kubelet podresources/v1 field numbers, not from our stubs."""
    numa = _field(1, _varint(1 << 3 | 0) + _varint(1))  # TopologyInfo.nodes[NUMANode{ID=1}]
    devices = (
        _field(1, b"habana.ai/gaudi") + _field(2, b"SIMSN0002") + _field(2, b"SIMSN0003") + _field(3, numa)
    )
    memory = _field(1, b"memory") + _varint(2 << 3 | 0) + _varint(1 << 30)
    container = (
        _field(1, b"worker") + _field(2, devices) + _field(3, _varint(4) + _varint(5)) + _field(4, memory)
    )
    pod_resources = _field(1, b"job-9") + _field(2, b"research") + _field(3, container)
    kubelet.answer_raw(_field(1, pod_resources))
    with PodResourcesClient(sock) as client:
        assert attribute(DEVICES, client.list()) == {
            "sim-uuid-0002": Owner("research", "job-9", "worker"),
            "sim-uuid-0003": Owner("research", "job-9", "worker"),
        }


def test_other_resource_names_can_be_counted(kubelet, sock):
    kubelet.set_pods([pod("ml", "j", {"c": {"example.com/hpu": ["SIMSN0001"], GAUDI: ["SIMSN0002"]}})])
    with PodResourcesClient(sock) as client:
        allocations = client.list()
    assert attribute(DEVICES, allocations, resource_names={"example.com/hpu"}) == {
        "sim-uuid-aaaa-0001": Owner("ml", "j", "c")
    }
    assert attribute(DEVICES, allocations, resource_names=()) == {}


def test_accepts_device_readings(kubelet, sock):
    readings = [DeviceReading(identity=d, utilization=0.5) for d in DEVICES]
    kubelet.set_pods([pod("ml", "j", {"c": {GAUDI: ["hl5"]}})])
    with PodResourcesClient(sock) as client:
        owners = attribute(readings, client.list())
    assert owners == {readings[5].key: Owner("ml", "j", "c")}


def test_absent_socket_fails_fast_naming_the_path(sock):
    client = PodResourcesClient(sock, timeout=30)
    start = time.monotonic()
    with pytest.raises(AttributionError, match="does not exist") as err:
        client.list()
    assert sock in str(err.value)
    assert time.monotonic() - start < client.timeout  # did not wait for the deadline


def test_plain_file_at_socket_path(sock):
    Path(sock).write_text("not a socket")
    with pytest.raises(AttributionError, match="not a unix socket") as err:
        PodResourcesClient(sock, timeout=30).list()
    assert sock in str(err.value)


def test_connection_refused_on_a_stale_socket(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)  # a socket file nobody listens on, as after a kubelet crash
    s.close()
    client = PodResourcesClient(sock, timeout=30)
    start = time.monotonic()
    with pytest.raises(AttributionError, match="unavailable") as err:
        client.list()
    assert sock in str(err.value)
    assert time.monotonic() - start < client.timeout


def test_kubelet_aborting_with_unavailable_then_recovering(kubelet, sock):
    client = PodResourcesClient(sock, timeout=30)
    kubelet.fail_with(grpc.StatusCode.UNAVAILABLE)
    start = time.monotonic()
    with pytest.raises(AttributionError, match="unavailable") as err:
        client.list()
    assert sock in str(err.value)
    assert time.monotonic() - start < client.timeout

    kubelet.fail_with(None)
    kubelet.set_pods([pod("ml", "j", {"c": {GAUDI: ["SIMSN0007"]}})])
    assert attribute(DEVICES, client.list()) == {"sim-uuid-0007": Owner("ml", "j", "c")}


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, "not served"),
        (grpc.StatusCode.PERMISSION_DENIED, "permission denied"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_other_kubelet_errors_are_named(kubelet, sock, code, words):
    kubelet.fail_with(code)
    with pytest.raises(AttributionError, match=words) as err:
        PodResourcesClient(sock).list()
    assert sock in str(err.value)


def test_one_transient_unavailable_is_retried_on_a_fresh_channel(kubelet, sock):
    kubelet.set_pods([pod("ml", "j", {"c": {GAUDI: ["SIMSN0002"]}})])
    with PodResourcesClient(sock, timeout=30) as client:
        assert attribute(DEVICES, client.list()) == {"sim-uuid-0002": Owner("ml", "j", "c")}
        kubelet.fail_with(grpc.StatusCode.UNAVAILABLE, times=1)  # e.g. the kubelet was shutting down
        assert attribute(DEVICES, client.list()) == {"sim-uuid-0002": Owner("ml", "j", "c")}
    assert kubelet.calls == 3


def test_kubelet_restart_is_invisible_to_the_next_call(sock):
    client = PodResourcesClient(sock, timeout=30)
    with FakeKubelet(sock) as first:
        first.set_pods([pod("ml", "before", {"c": {GAUDI: ["SIMSN0001"]}})])
        assert attribute(DEVICES, client.list()) == {"sim-uuid-aaaa-0001": Owner("ml", "before", "c")}
    with FakeKubelet(sock) as second:  # a new socket inode at the same path
        second.set_pods([pod("ml", "after", {"c": {GAUDI: ["SIMSN0001"]}})])
        assert attribute(DEVICES, client.list()) == {"sim-uuid-aaaa-0001": Owner("ml", "after", "c")}
    client.close()


def test_silent_socket_hits_the_deadline(sock):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accepts and never speaks HTTP/2, like a wedged kubelet
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with pytest.raises(AttributionError, match=r"no answer within 0\.5s") as err:
            PodResourcesClient(sock, timeout=0.5).list()
        assert sock in str(err.value)
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        listener.close()


def test_undecodable_response(kubelet, sock):
    kubelet.answer_raw(b"\xff\xff\xff\xff")
    with pytest.raises(AttributionError, match="bad response") as err:
        PodResourcesClient(sock).list()
    assert sock in str(err.value)


def test_pod_without_a_name_is_a_bad_response(kubelet, sock):
    kubelet.set_pods([pod("ml", "", {"c": {GAUDI: ["SIMSN0001"]}})])
    with pytest.raises(AttributionError, match=r"pod_resources\[0\] has an empty name") as err:
        PodResourcesClient(sock).list()
    assert sock in str(err.value)


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        PodResourcesClient("/nonexistent.sock", timeout=0)


# -- matching rules, no server needed ----------------------------------------------------------------------


def _alloc(*ids: str, resource: str = GAUDI, pod_name: str = "p") -> Allocation:
    return Allocation("ns", pod_name, "c", resource, ids)


@pytest.mark.parametrize(
    ("device_id", "key"),
    [
        ("simsn0002", "sim-uuid-0002"),  # serial, other case
        (" sim-uuid-0003 ", "sim-uuid-0003"),  # uuid with stray whitespace
        ("0000:CC:00.0", "sim-uuid-0004"),  # PCI bus id, upper case
        ("cc:00.0", "sim-uuid-0004"),  # PCI bus id without domain
        ("00000000:cd:00.0", "index-5"),  # PCI bus id, 8-digit domain, device without uuid
        ("7", "sim-uuid-0007"),  # index
        ("HL1", "sim-uuid-aaaa-0001"),
        ("accel0", "sim-uuid-0000"),
    ],
)
def test_id_formats(device_id, key):
    assert attribute(DEVICES, [_alloc(device_id)]) == {key: Owner("ns", "p", "c")}


def test_pci_domain_other_than_zero_is_kept():
    dev = DeviceIdentity(index=0, uuid="u", pci_bus_id="0001:19:00.0")
    assert attribute([dev], [_alloc("19:00.0")]) == {}
    assert attribute([dev], [_alloc("0001:19:00.0")]) == {"u": Owner("ns", "p", "c")}


def test_hl_name_follows_the_minor_number_where_known():
    dev = DeviceIdentity(index=2, uuid="u", minor=4)
    assert attribute([dev], [_alloc("hl4")]) == {"u": Owner("ns", "p", "c")}
    assert attribute([dev], [_alloc("hl2")]) == {}


def test_first_owner_of_a_shared_device_is_kept():
    allocations = [_alloc("SIMSN0001", pod_name="init"), _alloc("SIMSN0001", pod_name="app")]
    assert attribute(DEVICES, allocations) == {"sim-uuid-aaaa-0001": Owner("ns", "init", "c")}


# -- HPC job files -----------------------------------------------------------------------------------------


def test_hpc_job_files(tmp_path, caplog):
    (tmp_path / "0").write_text("1234\n")
    (tmp_path / "1").write_text("")
    # no file for device 2
    (tmp_path / "3").mkdir()  # unreadable as a file, even for root
    (tmp_path / "4").write_text("  job-77  \nstale second line\n")
    (tmp_path / "5").write_text("8801")
    (tmp_path / "6").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "7").write_text("\n\n")
    with caplog.at_level(logging.WARNING, logger="exporter.kubernetes.hpc"):
        jobs = read_hpc_jobs(tmp_path, DEVICES)
    assert jobs == {"sim-uuid-0000": "1234", "sim-uuid-0004": "job-77", "index-5": "8801"}
    warned = caplog.text
    assert str(tmp_path / "3") in warned
    assert str(tmp_path / "6") in warned


def test_hpc_jobs_change_between_ticks(tmp_path):
    (tmp_path / "2").write_text("100\n")
    assert read_hpc_jobs(tmp_path, DEVICES) == {"sim-uuid-0002": "100"}
    (tmp_path / "2").unlink()
    (tmp_path / "6").write_text("101\n")
    assert read_hpc_jobs(tmp_path, DEVICES) == {"sim-uuid-0006": "101"}


def test_hpc_missing_directory_means_no_jobs(tmp_path):
    assert read_hpc_jobs(tmp_path / "absent", DEVICES) == {}
