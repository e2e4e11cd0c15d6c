# TTG — one target per thing a person does. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
TOOLS   := .tools/bin
# Helm majors the chart is tested with; binaries come from ci/ensure-helm (pinned sha256).
HELM4   := $(TOOLS)/helm
HELM3   := $(TOOLS)/helm3
export PATH := $(CURDIR)/$(TOOLS):$(PATH)

PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: worker/pyproject.toml requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'worker[demo]' -r requirements-dev.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the package and the dev tools

$(HELM4):
	bash ci/ensure-helm 4 $(TOOLS)
$(HELM3):
	bash ci/ensure-helm 3 $(TOOLS) helm3

.PHONY: tools
tools: venv $(HELM4) $(HELM3) ## install helm 3 and 4 into .tools/bin (and the venv)
	@bash ci/ensure-brokers.sh

.PHONY: test
test: tools ## run every test that can run here (unit, integration, fault, chart; e2e skips without a cluster)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: lint
lint: tools ## ruff, mypy, helm lint, shellcheck, hadolint, actionlint
	bash ci/lint.sh

.PHONY: demo
demo: venv ## the whole thing on this machine: embedded Redis, 2 workers, one SIGKILLed at 30%
	$(VENV)/bin/ttg demo --params 20000 --workers 2 --work-ms 40 --kill-at 0.3

.PHONY: bench
bench: venv ## print throughput, recovery and seeding figures (Redis; RabbitMQ when present)
	$(PY) bench/run.py

.PHONY: bench-cluster
bench-cluster: venv ## throughput on broker clusters, and the time from a node's death to progress
	$(PY) bench/node_loss.py

.PHONY: clean
clean: ## remove .venv, .tools and caches
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

.PHONY: kind-up
kind-up: tools ## Kind cluster (1+3 nodes) with the worker image loaded and TTG installed (BACKEND=redis|rabbitmq)
	bash kind/up.sh

.PHONY: kind-down
kind-down: ## delete the Kind cluster
	bash kind/down.sh

.PHONY: e2e
e2e: ## run an end-to-end scenario on the Kind cluster (SCENARIO=worker-sigkill|broker-restart)
	bash ci/e2e.sh
