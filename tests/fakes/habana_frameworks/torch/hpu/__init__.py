"""FAKE habana_frameworks.torch.hpu memory API, with the shapes of the real one (ints, bytes; memory_stats keys
Limit, InUse, MaxInUse, NumAllocs, ...). Tests drive it with ``fake_allocate``/``fake_free``/``fake_fail``."""

from __future__ import annotations

_LIMIT = 96 * 1024**3  # a Gaudi 2 card's HBM
_state = {"in_use": 0, "max_in_use": 0, "allocs": 0, "frees": 0, "fail": None}


def _check() -> None:
    if _state["fail"] is not None:
        raise RuntimeError(_state["fail"])


def memory_stats(device=None) -> dict[str, int]:
    _check()
    return {
        "Limit": _LIMIT,
        "InUse": _state["in_use"],
        "MaxInUse": _state["max_in_use"],
        "NumAllocs": _state["allocs"],
        "NumFrees": _state["frees"],
        "ActiveAllocs": _state["allocs"] - _state["frees"],
        "MaxAllocSize": _state["max_in_use"],
        "TotalSystemAllocs": _state["allocs"],
        "TotalSystemFrees": _state["frees"],
        "TotalActiveAllocs": _state["allocs"] - _state["frees"],
    }


def memory_allocated(device=None) -> int:
    _check()
    return _state["in_use"]


def max_memory_allocated(device=None) -> int:
    _check()
    return _state["max_in_use"]


def reset_peak_memory_stats(device=None) -> None:
    _state["max_in_use"] = _state["in_use"]


# --- test controls (not part of the real API)
def fake_allocate(nbytes: int) -> None:
    _state["in_use"] += nbytes
    _state["allocs"] += 1
    _state["max_in_use"] = max(_state["max_in_use"], _state["in_use"])


def fake_free(nbytes: int) -> None:
    _state["in_use"] = max(0, _state["in_use"] - nbytes)
    _state["frees"] += 1


def fake_fail(message: str | None) -> None:
    """Make every call raise RuntimeError(message) (None: work again), like a driver error."""
    _state["fail"] = message


def fake_reset() -> None:
    _state.update(in_use=0, max_in_use=0, allocs=0, frees=0, fail=None)
