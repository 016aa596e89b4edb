#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the real Prometheus, Alertmanager and the other
# tools the tests start (apt-get, as root or through sudo), the project and its dev dependencies in .venv, then
# ruff and pytest.
#   GAUDI_TEST_CONTAINER=0  skip building and running the container image (on by default)
#   extra arguments go to pytest, e.g.  scripts/test.sh -k e2e
set -euo pipefail
cd "$(dirname "$0")/.."
export GAUDI_TEST_CONTAINER=${GAUDI_TEST_CONTAINER:-1}
PY=${PYTHON:-python3}

# command -> Debian package
tools=(prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager
       prometheus-node-exporter:prometheus-node-exporter openssl:openssl
       ss:iproute2  # ss: tests/test_http_hardening.py reads the listen backlog
       gcc:gcc  # gcc builds the stand-in libhlml.so (tests/fakes/libhlml) the real pyhlml loads
       victoria-metrics:victoria-metrics)  # brings vmalert (tests/test_global_stack.py)
if [ "$GAUDI_TEST_CONTAINER" = 1 ]; then
  tools+=(buildah:buildah debootstrap:debootstrap podman:podman)
fi
need=()
for t in "${tools[@]}"; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t##*:}")
done
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
command -v "$PY" >/dev/null 2>&1 || need+=(python3)
# Debian ships venv's ensurepip separately: without it `python3 -m venv` makes a venv with no pip
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  echo "== installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "== creating .venv"
  rm -rf .venv  # a venv left without pip by an earlier failed attempt
  "$PY" -m venv .venv
fi
echo "== installing gaudi-exporter[dev] into .venv"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
# the hlml tests run on the newest habana-pyhlml pyproject.toml allows (installed above) and on the lowest
# (tests/support/pyhlml_releases.py imports it from here); keep this pin at pyproject's lower bound
PYHLML_LOWEST=1.20.0.543
if [ "$(cat .venv/pyhlml-lowest/.version 2>/dev/null)" != "$PYHLML_LOWEST" ]; then
  rm -rf .venv/pyhlml-lowest
  .venv/bin/python -m pip install -q --no-deps --target .venv/pyhlml-lowest "habana-pyhlml==$PYHLML_LOWEST"
  echo "$PYHLML_LOWEST" > .venv/pyhlml-lowest/.version
fi
# the training-side tests run a real (CPU) torch; the exporter itself never needs it
.venv/bin/python -m pip install -q 'torch==2.13.0' || echo "warning: torch not installable: training tests will skip"

export AWS_EC2_METADATA_DISABLED=true  # tests never talk to a real metadata service
export PATH="$PWD/.venv/bin:$PATH"     # the dev tools (kubectl, hadolint, yamllint) live in the venv
echo "== ruff"
ruff check .
echo "== pytest"
exec python -m pytest -p no:cacheprovider -q -rs "$@"
