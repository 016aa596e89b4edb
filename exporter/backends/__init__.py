"""Device backends and the choice between them (``--backend``)."""

from __future__ import annotations

import logging

from exporter.backends.base import Backend, BackendUnavailable

log = logging.getLogger(__name__)

NAMES = ("auto", "hlml", "hlsmi", "simulated")


def create(name: str, *, hlsmi_path: str = "hl-smi", hlsmi_timeout: float = 10.0, simulated_devices: int = 8,
           simulated_profile: str = "training",
           simulated_seed: int = 0, simulated_model: str = "HL-325L", interval: float = 5.0,
           hlml_module: object | None = None) -> Backend:
    """Build and open the backend ``name``; ``auto`` tries hlml, then hl-smi, and never falls back to simulated."""
    if name == "simulated":
        from exporter.backends.simulated import SimulatedBackend

        backend: Backend = SimulatedBackend(devices=simulated_devices, profile=simulated_profile,
                                            seed=simulated_seed, model=simulated_model, interval=interval)
        backend.open()
        return backend
    if name == "hlml":
        from exporter.backends.hlml import HlmlBackend

        backend = HlmlBackend(module=hlml_module)
        backend.open()
        return backend
    if name == "hlsmi":
        from exporter.backends.hlsmi import HlSmiBackend

        backend = HlSmiBackend(path=hlsmi_path, timeout=hlsmi_timeout)
        backend.open()
        return backend
    if name == "auto":
        reasons = []
        for label, kw in (("hlml", {"hlml_module": hlml_module}),
                          ("hl-smi", {"hlsmi_path": hlsmi_path, "hlsmi_timeout": hlsmi_timeout})):
            try:
                return create(label.replace("-", ""), **kw)
            except BackendUnavailable as e:
                reasons.append(f"{label}: {e}")
        raise BackendUnavailable(
            "no Gaudi device backend works on this machine (" + "; ".join(reasons) + "). "
            "Install the Habana driver (libhlml) or hl-smi, point --hlsmi.path at hl-smi, "
            "or run `--backend simulated` for a demo with simulated devices."
        )
    raise BackendUnavailable(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")
