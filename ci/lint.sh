#!/usr/bin/env bash
# lint.sh — every static check the project has, in one place (make lint, ci.yaml).
# Tools come from .venv (requirements-dev.txt) and .tools/bin (ci/ensure-helm).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${ROOT}/.venv/bin"
TOOLS="${ROOT}/.tools/bin"

step() { printf '\n== %s\n' "$*"; }

python_checks() {
  step "ruff"
  "${VENV}/ruff" check worker tests bench examples
  step "mypy --strict (worker/src, examples)"
  "${VENV}/mypy"
}

shell_checks() {
  step "shellcheck"
  local scripts
  mapfile -t scripts < <(git -C "${ROOT}" ls-files -co --exclude-standard '*.sh' ci/ensure-helm .ci/run)
  "${VENV}/shellcheck" "${scripts[@]/#/${ROOT}/}"
}

chart_checks() {
  [ -d "${ROOT}/charts/ttg" ] || return 0
  local helm
  for helm in "${TOOLS}/helm" "${TOOLS}/helm3"; do
    step "$(basename "${helm}") lint --strict"
    "${helm}" lint --strict "${ROOT}/charts/ttg"
  done
}

container_checks() {
  local dockerfiles=() f
  for f in worker/Dockerfile examples/sweep-sim/Dockerfile; do
    [ -f "${ROOT}/${f}" ] && dockerfiles+=("${ROOT}/${f}")
  done
  [ "${#dockerfiles[@]}" -gt 0 ] || return 0
  step "hadolint"
  "${VENV}/hadolint" "${dockerfiles[@]}"
}

workflow_checks() {
  [ -d "${ROOT}/.github/workflows" ] || return 0
  step "actionlint"
  (cd "${ROOT}" && SHELLCHECK_OPTS="" "${VENV}/actionlint" -shellcheck "${VENV}/shellcheck")
  # Offline audits only: no GitHub API token on this machine or in make lint.
  step "zizmor"
  "${VENV}/zizmor" --offline --no-progress "${ROOT}/.github/workflows"
}

main() {
  python_checks
  shell_checks
  chart_checks
  container_checks
  workflow_checks
  step "lint: all clean"
}

main "$@"
