"""Simulated HPUs for demos and tests: deterministic, seedable, and always labelled as simulated.

Each reading is a pure function of (seed, device, tick), so two runs with the same seed export the same values.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from exporter.readings import BackendResult, DeviceError, DeviceIdentity, DeviceReading, SlowReading

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class Model:
    name: str
    generation: str
    memory_bytes: int
    power_limit_watts: float
    idle_watts: float
    nic_ports: int
    soc_clock_mhz: int


MODELS: dict[str, Model] = {
    "HL-205": Model("HL-205", "Gaudi 1", 32 * GIB, 350.0, 95.0, 10, 1500),
    "HL-225": Model("HL-225", "Gaudi 2", 96 * GIB, 600.0, 150.0, 24, 1650),
    "HL-325L": Model("HL-325L", "Gaudi 3", 128 * GIB, 900.0, 220.0, 24, 1600),
}

PROFILES = ("training", "idle", "bursty", "degraded")

# degraded: this device disappears after LOST_AFTER_TICKS ticks, as a device lost to a driver fault would.
LOST_AFTER_TICKS = 2


class SimulatedBackend:
    name = "simulated"

    def __init__(self, devices: int = 8, profile: str = "training", seed: int = 0, model: str = "HL-325L",
                 interval: float = 5.0) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown simulated profile {profile!r}; expected one of {', '.join(PROFILES)}")
        if model not in MODELS:
            raise ValueError(f"unknown simulated model {model!r}; expected one of {', '.join(MODELS)}")
        if devices < 1:
            raise ValueError("simulated devices must be at least 1")
        self.devices = devices
        self.profile = profile
        self.seed = seed
        self.model = MODELS[model]
        self.interval = interval
        self._tick = 0
        self._energy = [0.0] * devices
        self._ecc_corrected = [0] * devices
        self._thermal_throttle_seconds = [0.0] * devices

    def open(self) -> None:
        log.warning("SIMULATED backend: %d simulated %s (%s) devices, profile %r, seed %d. These are not real "
                    "readings; every series is marked backend=\"simulated\".", self.devices, self.model.generation,
                    self.model.name, self.profile, self.seed)

    def close(self) -> None:
        pass

    def _identity(self, i: int) -> DeviceIdentity:
        return DeviceIdentity(
            index=i,
            uuid=f"SIM-{self.model.name}-{self.seed:04d}-{i:02d}",
            serial=f"SIM{self.seed:04d}{i:04d}",
            name=self.model.name,
            model=self.model.generation,
            pci_bus_id=f"0000:{0x19 + i * 0x10:02x}:00.0",
            driver_version="simulated",
            firmware_version="simulated",
            minor=i,
        )

    def _utilization(self, i: int, rng: random.Random) -> float:
        t = self._tick
        if self.profile == "training":
            return min(1.0, 0.88 + 0.1 * rng.random())
        if self.profile == "idle":
            return 0.02 * rng.random()
        if self.profile == "bursty":
            # 12 ticks busy, 12 idle, devices shifted so the node is never all busy or all idle
            busy = ((t + 3 * i) // 12) % 2 == 0
            return 0.75 + 0.2 * rng.random() if busy else 0.03 * rng.random()
        # degraded: a node that wastes money: low utilisation, one hot device, one device lost
        return 0.05 + 0.15 * rng.random()

    def read(self, *, slow: bool) -> BackendResult:
        self._tick += 1
        m = self.model
        devices = []
        errors = []
        for i in range(self.devices):
            ident = self._identity(i)
            if self.profile == "degraded" and i == self.devices - 1 and self._tick > LOST_AFTER_TICKS:
                errors.append(DeviceError(i, ident.uuid, "simulated device lost (profile degraded)"))
                continue
            rng = random.Random(f"{self.seed}:{i}:{self._tick}")
            util = self._utilization(i, rng)
            power = m.idle_watts + (m.power_limit_watts * 0.92 - m.idle_watts) * util + 5 * rng.random()
            self._energy[i] += power * self.interval
            hot = self.profile == "degraded" and i == 0
            temp_aip = 32 + 50 * util + 4 * rng.random() + (60 if hot else 0)
            if hot:
                self._thermal_throttle_seconds[i] += self.interval
            mem_used = int(m.memory_bytes * (0.08 + 0.8 * util if self.profile != "idle" else 0.01))
            slow_reading = None
            if slow:
                if rng.random() < 0.1:
                    self._ecc_corrected[i] += 1
                ports = tuple((p, not (self.profile == "degraded" and i == 1 and p == 0)) for p in range(m.nic_ports))
                slow_reading = SlowReading(
                    ecc_corrected=self._ecc_corrected[i],
                    ecc_uncorrected=1 if (self.profile == "degraded" and i == 0) else 0,
                    pcie_replays=0,
                    nic_ports_up=ports,
                    firmware_version="simulated",
                    ecc_volatile_corrected=self._ecc_corrected[i],
                    ecc_volatile_uncorrected=1 if (self.profile == "degraded" and i == 0) else 0,
                    ecc_mode=(("current", True), ("pending", True)),
                    # degraded: device 0 has replaced a row and waits for a reset; device 1 trained at x8
                    replaced_rows=(("multiple_single_bit", 0), ("double_bit", 1 if hot else 0)),
                    row_replacement_pending=hot,
                    pcie_link=(("generation", 5), ("width", 8 if self.profile == "degraded" and i == 1 else 16),
                               ("max_generation", 5), ("max_width", 16)),
                    temperature_thresholds=(("shutdown", 110.0), ("slowdown", 100.0)),
                    power_limits_watts=(("default", m.power_limit_watts), ("min", m.power_limit_watts / 2),
                                        ("max", m.power_limit_watts)),
                    clocks_max_hertz=(("soc", float(m.soc_clock_mhz * 1_000_000)),),
                )
            devices.append(DeviceReading(
                identity=ident,
                utilization=round(util, 4),
                memory_used_bytes=mem_used,
                memory_total_bytes=m.memory_bytes,
                power_watts=round(power, 1),
                power_limit_watts=m.power_limit_watts,
                energy_joules=round(self._energy[i], 1),
                temperatures=(("aip", round(temp_aip, 1)), ("board", round(28 + 20 * util, 1)),
                              ("hbm", round(30 + 35 * util, 1))),
                clocks_hertz=(("soc", float(m.soc_clock_mhz * 1_000_000 if not hot else 900_000_000)),),
                throttled=(("power", False), ("thermal", hot)),
                slow=slow_reading,
                throttle_seconds=(("power", 0.0), ("thermal", self._thermal_throttle_seconds[i])),
            ))
        return BackendResult(devices=tuple(devices), errors=tuple(errors))
