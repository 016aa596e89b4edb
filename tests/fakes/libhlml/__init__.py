"""Build and drive the C stand-in libhlml.so (libhlml.c) that the real habana-pyhlml loads in tests.

``build()`` compiles a variant with gcc (symbols left out like an older driver, or the pre-1.19 PCI struct);
``write_state()`` writes the values file the library re-reads whenever it changes; ``point_pyhlml_at()`` makes
pyhlml load the stand-in instead of /usr/lib/habanalabs/libhlml.so. For a daemon started as a subprocess,
``subprocess_env()`` puts sitecustomize.py on PYTHONPATH, which does the same at interpreter start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "libhlml.c"
SITE_DIR = HERE / "site"
PYHLML_DEFAULT_PATH = "/usr/lib/habanalabs/libhlml.so"  # pyhlml.hlml_lib.LibHLML.__init__'s default
STATE_ENV = "GAUDI_FAKE_HLML_STATE"  # read by libhlml.c
LIBRARY_ENV = "GAUDI_EXPORTER_TEST_LIBHLML"  # read by site/sitecustomize.py
MIB = 1024**2


def build(out_dir: Path, *, omit: Iterable[str] = (), old_pci_layout: bool = False) -> Path:
    """Compile libhlml.c into ``out_dir``; one file per variant (dlopen caches by path, so never rebuild one)."""
    omit = sorted(omit)
    flags = [f"-DOMIT_{sym}" for sym in omit] + (["-DHLML_OLD_PCI_LAYOUT"] if old_pci_layout else [])
    tag = hashlib.sha1((SOURCE.read_text() + " ".join(flags)).encode()).hexdigest()[:12]
    out = Path(out_dir) / f"libhlml-{tag}.so"
    if not out.exists():
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise RuntimeError("gcc is needed to build the stand-in libhlml (apt-get install gcc libc6-dev)")
        tmp = out.with_suffix(".tmp")
        subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *flags, "-o", str(tmp), str(SOURCE)],
                       check=True, capture_output=True, text=True)
        tmp.replace(out)
    return out


def gaudi3(i: int, **overrides: object) -> dict[str, object]:
    """One HL-325L's values in HLML's units (mW, mJ, MHz, percent, bytes, ns); overrides replace keys."""
    dev: dict[str, object] = {
        "name": "HL-325L", "uuid": f"01P4-HL3090A0-18-U4V193-22-07-{i:02d}", "serial": f"N16B3D04{i:02d}",
        "bus_id": f"0000:{0x19 + 0x10 * i:02x}:00.0", "minor": i, "module_id": i,
        "util_aip": 87, "util_memory": 40, "memory_total": 131072 * MIB, "memory_used": 98304 * MIB,
        "power_mw": 612_345 + 1000 * i, "power_limit_mw": 850_000, "power_default_limit_mw": 900_000,
        "power_min_mw": 450_000, "power_max_mw": 900_000, "energy_mj": 123_456_789,
        "temperature": {0: 61, 1: 44, 3: 52, 4: 50}, "threshold": {0: 110, 1: 100, 2: 95},
        "clock": {0: 1600, 2: 1500, 3: 1550}, "max_clock": {0: 1800},
        "throttle_reasons": 0, "violation": {0: "1700000000000000,2500000000", 1: "1700000000000000,0"},
        "ecc": {"0.1": 17, "1.1": 2, "0.0": 4, "1.0": 1}, "ecc_mode": "1,1",
        "replaced_rows": {0: 3, 1: 1}, "rows_pending": 0,
        "pcie_tx": 1000, "pcie_rx": 2000, "pcie_replays": 9, "pcie_gen": 5, "pcie_width": 16,
        "link_speed": "32.0 GT/s", "link_width": "x16", "link_max_speed": "32.0 GT/s", "link_max_width": "x16",
        "fit_version": "1.22.1-fw-57.2.1-sec-9", "fw_os_version": "1.22.1-fw-57.2.1",
        # 24 ports (bits 0-23), the last three external (scale-out)
        "nic_mask": "0xFFFFFF,0,0xE00000,0", "link": {p: 1 for p in range(24)},
    }
    dev.update(overrides)
    return dev


def write_state(path: Path, devices: list[Mapping[str, object]], **global_keys: object) -> None:
    """Write the values file atomically (the library notices the new inode and re-reads)."""
    lines = [f"{k} {v}" for k, v in global_keys.items()]
    for i, dev in enumerate(devices):
        lines.append(f"device {i}")
        for key, value in dev.items():
            if key == "fail":
                lines += [f"fail {sym} {code}" for sym, code in dict(value).items()]  # type: ignore[arg-type]
            elif isinstance(value, Mapping):
                lines += [f"{key}.{k} {v}" for k, v in value.items()]
            else:
                lines.append(f"{key} {value}")
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def loader_default(pyhlml_module: object) -> str:
    """The library path the given pyhlml loads by default (the argument point_pyhlml_at replaces)."""
    lib = pyhlml_module.hlml_lib  # type: ignore[attr-defined]
    return lib.LibHLML.__init__.__defaults__[0]


def point_pyhlml_at(pyhlml_module: object, library: Path | str | None) -> None:
    """Make ``pyhlml.hlmlInit()`` load ``library`` (None: pyhlml's own default again)."""
    lib = pyhlml_module.hlml_lib  # type: ignore[attr-defined]
    lib.LibHLML.__init__.__defaults__ = (str(library) if library else PYHLML_DEFAULT_PATH,)


def subprocess_env(library: Path, state: Path, pyhlml_dir: Path | None = None) -> dict[str, str]:
    """Environment for a daemon subprocess that loads the stand-in (and, optionally, another pyhlml release)."""
    path = [str(SITE_DIR)] + ([str(pyhlml_dir)] if pyhlml_dir else [])
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {LIBRARY_ENV: str(library), STATE_ENV: str(state), "PYTHONPATH": os.pathsep.join(path)}
