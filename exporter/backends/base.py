"""The one small interface every device backend implements."""

from __future__ import annotations

from typing import Protocol

from exporter.readings import BackendResult


class BackendUnavailable(Exception):
    """The backend cannot run on this machine (library missing, tool not found); the message says what to do."""


class Backend(Protocol):
    name: str  # "hlml", "hlsmi" or "simulated": exported on gaudi_exporter_build_info{backend}

    def open(self) -> None:
        """Prepare (load the library, check the tool); raise BackendUnavailable when it cannot work here."""

    def read(self, *, slow: bool) -> BackendResult:
        """Read every device. ``slow`` asks for the slow-changing readings too (ECC, NIC links, firmware).

        A device that fails goes into ``errors``; only a failure of the whole backend raises.
        """

    def close(self) -> None:
        """Release the library or tool."""
