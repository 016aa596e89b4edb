"""Which pod owns which HPU: joins the kubelet's device allocations with the devices a backend read.

Device plugins advertise devices under IDs of their own choosing. The Habana device plugin has used the HLML
UUID (2019 releases) and the HLML serial number (later releases); other plugins use PCI bus IDs or indexes.
We match an allocation's device ID against every identifier the device carries, after normalising case and
the PCI domain, so attribution works whichever the plugin picked. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from exporter.kubernetes.client import Allocation
from exporter.readings import DeviceIdentity, DeviceReading

DEFAULT_RESOURCE_NAMES = ("habana.ai/gaudi",)

# domain:bus:device.function, the domain 4 (Linux) or 8 (HLML/NVML style) hex digits, or missing
_PCI = re.compile(r"^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
_INDEXED = re.compile(r"^(?:hl|accel)?(\d+)$")  # "3", "hl3", "accel3" (/dev/hl3, /dev/accel/accel3)


@dataclass(frozen=True)
class Owner:
    namespace: str
    pod: str
    container: str


@dataclass(frozen=True)
class Attribution:
    """Owners by device key, plus the allocated IDs of counted resources that matched no device here."""

    owners: dict[str, Owner]
    unmatched_ids: tuple[str, ...]


from exporter.readings import device_key  # noqa: E402 - re-exported: the key owners join readings on


def normalise_id(device_id: str) -> str:
    """Lower-case, trimmed, and a PCI bus ID in domain 0 reduced to bus:device.function."""
    value = device_id.strip().lower()
    m = _PCI.match(value)
    if m:
        domain, bus, dev, fn = m.groups()
        if domain is None or int(domain, 16) == 0:
            return f"{bus}:{dev}.{fn}"
        return f"{int(domain, 16):04x}:{bus}:{dev}.{fn}"
    return value


def _device_tokens(identity: DeviceIdentity) -> list[str]:
    """Identifiers of one device, weakest first: a later (stronger) one wins a clash between devices."""
    tokens = [str(identity.index)]
    # /dev/hlN and /dev/accel/accelN are numbered by the driver's minor number where we know it.
    number = identity.minor if identity.minor is not None else identity.index
    tokens += [f"hl{number}", f"accel{number}"]
    for value in (identity.pci_bus_id, identity.serial, identity.uuid):
        if value and value.strip():
            tokens.append(normalise_id(value))
    return tokens


def _lookup(identities: Iterable[DeviceIdentity]) -> dict[str, str]:
    by_strength: list[list[tuple[str, str]]] = [[], []]  # index forms, then real identifiers
    for identity in identities:
        key = device_key(identity)
        tokens = _device_tokens(identity)
        by_strength[0] += [(t, key) for t in tokens[:3]]
        by_strength[1] += [(t, key) for t in tokens[3:]]
    table: dict[str, str] = {}
    for level in by_strength:
        for token, key in level:
            table[token] = key
    return table


def _identity(device: DeviceIdentity | DeviceReading) -> DeviceIdentity:
    return device.identity if isinstance(device, DeviceReading) else device


def match_devices(
    devices: Iterable[DeviceIdentity | DeviceReading],
    allocations: Iterable[Allocation],
    resource_names: Collection[str] = DEFAULT_RESOURCE_NAMES,
) -> Attribution:
    """Owners of this node's devices, and the IDs we could not place (to tell why labels are empty).

    A device reported for two containers (a pod's init and app containers may share one) keeps its first
    owner.
    """
    table = _lookup(_identity(d) for d in devices)
    wanted = set(resource_names)
    owners: dict[str, Owner] = {}
    unmatched: list[str] = []
    for alloc in allocations:
        if alloc.resource_name not in wanted:
            continue
        owner = Owner(namespace=alloc.namespace, pod=alloc.pod, container=alloc.container)
        for device_id in alloc.device_ids:
            key = table.get(normalise_id(device_id))
            if key is None:
                unmatched.append(device_id)
            else:
                owners.setdefault(key, owner)
    return Attribution(owners=owners, unmatched_ids=tuple(unmatched))


def attribute(
    devices: Iterable[DeviceIdentity | DeviceReading],
    allocations: Iterable[Allocation],
    resource_names: Collection[str] = DEFAULT_RESOURCE_NAMES,
) -> dict[str, Owner]:
    """Device key -> owning container; devices no pod holds are absent (their cost counts as unallocated)."""
    return match_devices(devices, allocations, resource_names).owners
