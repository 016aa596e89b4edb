"""Job attribution on Slurm-style clusters, the way dcgm-exporter's HPC mode does it.

A scheduler prolog writes the job id into ``<directory>/<device index>`` when it hands a device to a job, and
the epilog empties or removes the file. We read those files each tick; a missing or empty file means no job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from exporter.kubernetes.attribution import device_key
from exporter.readings import DeviceIdentity, DeviceReading

log = logging.getLogger(__name__)

_MAX_READ = 4096  # a job id is short; never slurp a file someone pointed us at by mistake
_warned: set[Path] = set()  # files already warned about: once per file until it reads again, not every tick


def _warn_once(path: Path, msg: str, *args: object) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning(msg, *args)


def read_hpc_jobs(directory: Path, devices: Iterable[DeviceIdentity | DeviceReading]) -> dict[str, str]:
    """Device key -> job id from the first line of its file; unreadable files are skipped with a warning."""
    jobs: dict[str, str] = {}
    directory = Path(directory)
    for device in devices:
        identity = device.identity if isinstance(device, DeviceReading) else device
        path = directory / str(identity.index)
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_READ)
        except FileNotFoundError:
            continue
        except OSError as err:
            _warn_once(
                path,
                "hpc job file %s unreadable, device %d left without a job: %s",
                path,
                identity.index,
                err.strerror or err,
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            _warn_once(path, "hpc job file %s is not UTF-8, device %d left without a job", path, identity.index)
            continue
        _warned.discard(path)
        lines = text.splitlines()
        job = lines[0].strip() if lines else ""
        if job:
            jobs[device_key(identity)] = job
    return jobs
