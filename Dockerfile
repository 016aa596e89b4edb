# gaudi-exporter container image.
#
# Two stages on the same base: "build" makes a virtualenv with the pinned dependencies (binary wheels only) and the
# package; the final stage copies that venv onto a clean base, so no compiler, pip cache or source tree ships.
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module: the official python slim image by
# default, or a debootstrapped Debian bookworm (python3, python3-venv, python3-pip) where no registry is reachable.
#
# HLML (libhlml.so) is never baked in: it belongs to the host's driver and must match it. The DaemonSet mounts the
# host's /usr/lib/habanalabs read-only; the image carries only the habana-pyhlml binding, which loads
# /usr/lib/habanalabs/libhlml.so when the hlml backend starts.
#
# Build:  buildah bud -t gaudi-exporter .   (or: docker build -t gaudi-exporter .)
# Run:    gaudi-exporter --backend simulated  (a node without Gaudi: simulated data, labelled as such)

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

# PATH spelled out: a debootstrapped base imported from a tarball has no image config to inherit one from.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# python3 -m venv works on both bases (/usr/local/bin/python3 in the official image, /usr/bin/python3 on Debian).
RUN python3 -m venv /opt/gaudi-exporter

WORKDIR /src
# Dependencies first: this layer is reused until requirements/image.txt changes.
COPY requirements/image.txt requirements/image.txt
RUN /opt/gaudi-exporter/bin/pip install --no-cache-dir --only-binary=:all: -r requirements/image.txt

COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY alerts/ alerts/
COPY dashboards/ dashboards/
# --no-deps: everything it needs is pinned above; a missing pin fails the import check below, not silently.
RUN /opt/gaudi-exporter/bin/pip install --no-cache-dir --no-deps . \
    && /opt/gaudi-exporter/bin/python -c "import exporter.cli, pyhlml, boto3, grpc, prometheus_client" \
    && /opt/gaudi-exporter/bin/python -m pip uninstall --yes pip


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="gaudi-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Intel Gaudi (HPU) nodes: telemetry, live training cost, idle cost and spot risk" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="gaudi-exporter authors"

# The exporter writes nothing to disk; TMPDIR points at the one writable place (an emptyDir in Kubernetes) for
# libraries that insist. LD_LIBRARY_PATH lets libhlml.so find its sibling libraries in the mounted driver dir.
ENV PATH=/opt/gaudi-exporter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    LD_LIBRARY_PATH=/usr/lib/habanalabs

COPY --from=build /opt/gaudi-exporter /opt/gaudi-exporter

# A fixed numeric non-root user (no passwd entry needed), so runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9654
ENTRYPOINT ["gaudi-exporter"]
