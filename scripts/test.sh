#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the real Prometheus, Alertmanager and the other
# tools the tests start (needs root for apt-get), the project and its dev dependencies in .venv, then pytest.
#   GAUDI_TEST_CONTAINER=0  skip building and running the container image (on by default)
#   extra arguments go to pytest, e.g.  scripts/test.sh -k e2e
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for bin in prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager \
           prometheus-node-exporter:prometheus-node-exporter openssl:openssl buildah:buildah \
           debootstrap:debootstrap podman:podman; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if ((${#need[@]})); then
  echo "== installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing gaudi-exporter[dev] into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
# the training-side tests run a real (CPU) torch; the exporter itself never needs it
.venv/bin/python -m pip install -q 'torch==2.13.0' || echo "warning: torch not installable: training tests will skip"

export GAUDI_TEST_CONTAINER=${GAUDI_TEST_CONTAINER:-1}
export AWS_EC2_METADATA_DISABLED=true  # tests never talk to a real metadata service
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"
