"""HPU memory of the training process, read from habana_frameworks.torch when it is importable.

The import is optional: on a machine without the Habana stack (a CPU test, a laptop) the training metrics
still work, only the two memory gauges are absent, and the log says so once.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

log = logging.getLogger(__name__)

HPU_MODULE = "habana_frameworks.torch.hpu"


@dataclass(frozen=True)
class MemoryReading:
    allocated_bytes: int
    max_allocated_bytes: int


class MemoryReader(Protocol):
    def read(self) -> MemoryReading | None: ...


class HabanaMemoryReader:
    """Reads memory_allocated()/max_memory_allocated(), falling back to memory_stats() InUse/MaxInUse."""

    def __init__(self, hpu: ModuleType) -> None:
        self._hpu = hpu
        self._warned = False

    def read(self) -> MemoryReading | None:
        try:
            alloc = getattr(self._hpu, "memory_allocated", None)
            peak = getattr(self._hpu, "max_memory_allocated", None)
            if alloc is not None and peak is not None:
                return MemoryReading(int(alloc()), int(peak()))
            stats = self._hpu.memory_stats()
            return MemoryReading(int(stats["InUse"]), int(stats["MaxInUse"]))
        except Exception as e:  # a driver hiccup must not stop the training loop
            if not self._warned:
                log.warning("reading HPU memory from %s failed (%s); memory gauges keep their last value",
                            HPU_MODULE, e)
                self._warned = True
            return None


_reported: set[str] = set()


def load_reader(module: str = HPU_MODULE) -> HabanaMemoryReader | None:
    """Import the Habana HPU module if present; None otherwise, said once per process in the log."""
    try:
        hpu = importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything at import time
        if module not in _reported:
            _reported.add(module)
            log.warning("%s not importable (%s): HPU memory metrics are off, the other training metrics work",
                        module, e)
        return None
    return HabanaMemoryReader(hpu)
