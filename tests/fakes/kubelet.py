"""A kubelet pod-resources endpoint for tests: a real gRPC server on a unix socket serving v1 List.

Tests change the allocations between calls (pods start, move, end), make the server fail with a status code,
or answer with bytes that are not a ListPodResourcesResponse.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures

import grpc

from exporter.kubernetes import podresources_pb2 as pb
from exporter.kubernetes import podresources_pb2_grpc as pb_grpc

GAUDI = "habana.ai/gaudi"

# container name -> resource name -> device ids
Containers = Mapping[str, Mapping[str, Sequence[str]]]


def pod(namespace: str, name: str, containers: Containers, numa_node: int | None = 0) -> pb.PodResources:
    """One pod as the kubelet reports it (devices with their NUMA topology, like a topology-aware plugin)."""
    out = pb.PodResources(name=name, namespace=namespace)
    for cname, resources in containers.items():
        c = out.containers.add(name=cname)
        for resource, ids in resources.items():
            d = c.devices.add(resource_name=resource, device_ids=list(ids))
            if numa_node is not None:
                d.topology.nodes.add(ID=numa_node)
    return out


def short_socket_path(name: str = "kubelet.sock") -> str:
    """A socket path well under the AF_UNIX limit (~107 bytes), which pytest's tmp_path can exceed."""
    return os.path.join(tempfile.mkdtemp(prefix="kl-", dir="/tmp"), name)


class _Servicer(pb_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def List(self, request, context):  # noqa: N802 - the gRPC method name
        k = self.kubelet
        with k.lock:
            k.calls += 1
            abort = k.abort_code
            if abort is not None and k.abort_times is not None:
                k.abort_times -= 1
                if k.abort_times <= 0:
                    k.abort_code = None
            raw = k.raw_response
            pods = list(k.pods)
        if abort is not None:
            context.abort(abort, "fake kubelet told to fail")
        if raw is not None:
            return raw
        return pb.ListPodResourcesResponse(pod_resources=pods)


def _serialize(message: pb.ListPodResourcesResponse | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class FakeKubelet:
    """``with FakeKubelet(path) as k: k.set_pods([...])``; the socket goes away on exit, like a kubelet."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.lock = threading.Lock()
        self.pods: list[pb.PodResources] = []
        self.abort_code: grpc.StatusCode | None = None
        self.abort_times: int | None = None  # None: every call until fail_with(None)
        self.raw_response: bytes | None = None
        self.calls = 0
        self._server: grpc.Server | None = None

    def set_pods(self, pods: Sequence[pb.PodResources]) -> None:
        with self.lock:
            self.pods = list(pods)

    def fail_with(self, code: grpc.StatusCode | None, times: int | None = None) -> None:
        """Abort the next ``times`` List calls (all of them when None) with ``code``."""
        with self.lock:
            self.abort_code = code
            self.abort_times = times

    def answer_raw(self, data: bytes | None) -> None:
        with self.lock:
            self.raw_response = data

    def start(self) -> FakeKubelet:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        # As add_PodResourcesListerServicer_to_server, with a serializer that passes raw bytes too.
        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    _Servicer(self).List,
                    request_deserializer=pb.ListPodResourcesRequest.FromString,
                    response_serializer=_serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise RuntimeError(f"fake kubelet could not bind unix:{self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
