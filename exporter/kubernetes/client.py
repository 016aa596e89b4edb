"""Client for the kubelet pod-resources API v1 (`v1.PodResourcesLister/List`) over its unix socket.

The kubelet answers which device IDs each running container was given by a device plugin. We ask once per
tick; the call is local and cheap, but the kubelet may be restarting, so every failure becomes an
``AttributionError`` that names the socket, and the next call starts from a fresh channel.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass

import grpc

from exporter.kubernetes import podresources_pb2, podresources_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The kubelet caps its answers at 16 MiB (dcgm-exporter uses the same); gRPC's default 4 MiB is too small for
# nodes running hundreds of pods.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class AttributionError(Exception):
    """Pod attribution could not be read this tick; the message names the socket and what went wrong."""


@dataclass(frozen=True)
class Allocation:
    """Devices of one resource that the kubelet gave to one container."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


class PodResourcesClient:
    """Lists device allocations from the kubelet; reuses one channel and rebuilds it after any failure."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError(f"kubernetes pod-resources timeout must be > 0 seconds, got {timeout!r}")
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: podresources_pb2_grpc.PodResourcesListerStub | None = None

    def list(self) -> list[Allocation]:
        """Every device allocation of every running container, in the kubelet's order."""
        with self._lock:
            self._check_socket()
            reused = self._channel is not None
            try:
                response = self._call()
            except grpc.RpcError as err:
                self._close_channel()
                # A reused channel may still point at a kubelet that has since restarted (new socket inode) or
                # sit in gRPC's reconnect back-off; one retry on a fresh channel makes a restart invisible.
                if not (reused and err.code() == grpc.StatusCode.UNAVAILABLE):
                    raise self._error(err) from None
                try:
                    response = self._call()
                except grpc.RpcError as err2:
                    self._close_channel()
                    raise self._error(err2) from None
            return self._allocations(response)

    def close(self) -> None:
        with self._lock:
            self._close_channel()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _call(self) -> podresources_pb2.ListPodResourcesResponse:
        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"unix:{self.socket_path}",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.enable_http_proxy", 0),  # a unix socket never goes through HTTP(S)_PROXY
                ],
            )
            self._stub = podresources_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def _check_socket(self) -> None:
        """Name the usual deployment mistakes before gRPC turns them into a generic UNAVAILABLE."""
        path = self.socket_path
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            self._close_channel()
            raise AttributionError(
                f"kubelet pod-resources socket {path} does not exist "
                "(mount the host's /var/lib/kubelet/pod-resources directory into the exporter)"
            ) from None
        except OSError as err:
            self._close_channel()
            raise AttributionError(f"kubelet pod-resources socket {path}: {err.strerror or err}") from None
        if not stat.S_ISSOCK(mode):
            self._close_channel()
            raise AttributionError(f"kubelet pod-resources socket {path} is not a unix socket")

    def _error(self, err: grpc.RpcError) -> AttributionError:
        code = err.code()
        details = err.details() or ""
        path = self.socket_path
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            msg = f"kubelet pod-resources socket {path}: no answer within {self.timeout:g}s"
        elif code == grpc.StatusCode.UNAVAILABLE:
            msg = f"kubelet pod-resources socket {path}: unavailable ({details})"
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            msg = (
                f"kubelet pod-resources socket {path}: v1 PodResourcesLister.List not served "
                f"(kubelet older than 1.20?): {details}"
            )
        elif code == grpc.StatusCode.INTERNAL and "deserializ" in details.lower():
            msg = f"kubelet pod-resources socket {path}: bad response, not a v1 ListPodResourcesResponse"
        elif code == grpc.StatusCode.PERMISSION_DENIED:
            msg = f"kubelet pod-resources socket {path}: permission denied ({details})"
        else:
            msg = f"kubelet pod-resources socket {path}: {code.name} ({details})"
        return AttributionError(msg)

    def _allocations(self, response: podresources_pb2.ListPodResourcesResponse) -> list[Allocation]:
        out: list[Allocation] = []
        for i, pod in enumerate(response.pod_resources):
            if not pod.name or not pod.namespace:
                raise AttributionError(
                    f"kubelet pod-resources socket {self.socket_path}: bad response, "
                    f"pod_resources[{i}] has an empty {'name' if not pod.name else 'namespace'}"
                )
            for container in pod.containers:
                for devices in container.devices:
                    if not devices.device_ids:
                        continue
                    out.append(
                        Allocation(
                            namespace=pod.namespace,
                            pod=pod.name,
                            container=container.name,
                            resource_name=devices.resource_name,
                            device_ids=tuple(devices.device_ids),
                        )
                    )
        return out
