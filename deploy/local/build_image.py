"""Build the gaudi-exporter image where no container registry is reachable.

The Dockerfile's default base (the official python slim image) needs a registry. This script makes an
equivalent base from Debian packages instead - `debootstrap --variant=minbase
--include=python3,python3-venv,python3-pip bookworm` - imports it as a local image, then runs
`buildah bud --isolation chroot` on the Dockerfile with ``--build-arg BASE_IMAGE=<that image>``. chroot
isolation is the one that works on machines (CI runners, nested containers) where runc/crun cannot create
namespaces.

The base is cached between runs, keyed by a hash of its recipe: as a local image (podman/buildah storage) and
as a tarball in the cache directory, so a new image store rebuilds it without debootstrap.

    python deploy/local/build_image.py [--tag localhost/gaudi-exporter:dev] [--base IMAGE] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "python3-pip")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_REPO = "localhost/gaudi-exporter-base"


class BuildError(RuntimeError):
    """A build step failed; the message names the step and carries its output."""


def recipe_hash(suite: str = SUITE, packages: tuple[str, ...] = PACKAGES) -> str:
    """Identify a base rootfs by what went into it, so a changed recipe never reuses a stale cache."""
    text = f"debootstrap --variant=minbase --include={','.join(packages)} {suite}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """Where the base tarball lives: $GAUDI_IMAGE_CACHE, else a system cache when writable, else ~/.cache."""
    if env := os.environ.get("GAUDI_IMAGE_CACHE"):
        return Path(env)
    system = Path("/var/cache/gaudi-exporter")
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return Path.home() / ".cache" / "gaudi-exporter"


def _run(step: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise BuildError(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def image_exists(ref: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True).returncode == 0


def ensure_base_image(cache_dir: Path, suite: str = SUITE, packages: tuple[str, ...] = PACKAGES) -> str:
    """Return a local image with Debian's python3 and venv, building and caching it when missing."""
    key = recipe_hash(suite, packages)
    ref = f"{BASE_REPO}:{key}"
    if image_exists(ref):
        return ref
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"debian-{suite}-python-{key}.tar"
    if not tarball.exists():
        if os.geteuid() != 0:
            raise BuildError("debootstrap needs root to build the base rootfs (or pass --base IMAGE)")
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run("debootstrap", ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite,
                                 str(rootfs)])
            # apt lists and caches are not needed in an image and are most of the size difference.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (rootfs / sub).glob("*"):
                    if p.is_file():
                        p.unlink()
            partial = tarball.with_suffix(".tar.partial")
            _run("tar", ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
            partial.rename(tarball)
    _run("podman import", ["podman", "import", str(tarball), ref])
    return ref


def build(tag: str, base: str | None, context: Path = REPO, cache_dir: Path | None = None,
          extra_args: list[str] = ()) -> dict:
    """Build the Dockerfile in ``context`` as ``tag``; returns figures for the report (times, size)."""
    for tool in ("buildah", "podman") if base is None else ("buildah",):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed")
    t0 = time.monotonic()
    if base is None:
        base = ensure_base_image(cache_dir or default_cache_dir())
    t1 = time.monotonic()
    cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--build-arg", f"BASE_IMAGE={base}"]
    if CA_BUNDLE.exists():  # lets pip inside the build verify the package index with the host's CAs
        cmd += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    cmd += [*extra_args, "-t", tag, str(context)]
    _run("buildah bud", cmd)
    t2 = time.monotonic()
    size_bytes: int | None = None
    inspect = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                             text=True)
    with contextlib.suppress(ValueError):
        size_bytes = int(inspect.stdout.strip())
    return {"tag": tag, "base": base, "base_seconds": round(t1 - t0, 1), "build_seconds": round(t2 - t1, 1),
            "size_bytes": size_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", default="localhost/gaudi-exporter:dev")
    ap.add_argument("--base", help="use this base image instead of a debootstrapped Debian")
    ap.add_argument("--cache-dir", type=Path, help="where the base tarball is cached")
    ap.add_argument("--context", type=Path, default=REPO, help="build context (default: the repository)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = ap.parse_args(argv)
    try:
        figures = build(args.tag, args.base, context=args.context, cache_dir=args.cache_dir)
    except BuildError as e:
        print(f"build_image: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(figures))
    else:
        size = figures["size_bytes"]
        size_text = f"{size / 1e6:.0f} MB" if size else "unknown"
        print(f"built {figures['tag']} on {figures['base']}: base {figures['base_seconds']} s, "
              f"build {figures['build_seconds']} s, size {size_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
