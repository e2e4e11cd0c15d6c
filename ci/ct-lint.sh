#!/usr/bin/env bash
# ct-lint.sh — chart-testing's `ct lint` with its default checks (chart schema,
# yamllint, maintainers, version increment against the target branch, helm lint
# with each charts/ttg/ci/*-values.yaml), once per Helm major the chart supports.
# Needs ct, yamllint and yamale on PATH (CI: helm/chart-testing-action) and the
# target branch fetched (checkout with fetch-depth: 0).
#   TARGET_BRANCH=main (default)
#   REF_TYPE=tag: the release's run on a tagged commit, which need not be main's
#   head: its chart is compared with no branch (the version check is the tag's own,
#   ci/release.sh check-tag)
set -euo pipefail

readonly TARGET_BRANCH="${TARGET_BRANCH:-main}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly TOOLS="${ROOT}/.tools/bin"
TMP=""

cleanup() { [ -z "${TMP}" ] || rm -rf "${TMP}"; }

require() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null || { echo "ct-lint.sh: ${tool} not on PATH" >&2; exit 2; }
  done
}

main() {
  trap cleanup EXIT
  require ct yamllint yamale git
  [ -x "${TOOLS}/helm" ] || bash "${ROOT}/ci/ensure-helm" 4 "${TOOLS}"
  [ -x "${TOOLS}/helm3" ] || bash "${ROOT}/ci/ensure-helm" 3 "${TOOLS}" helm3
  TMP="$(mktemp -d)"
  local binary extra=()
  if [ "${REF_TYPE:-}" = tag ]; then
    # Lint every chart, not only those changed since the target branch.
    extra=(--all --check-version-increment=false)
  fi
  for binary in helm3 helm; do
    # ct calls `helm`: put this major first on PATH under that name.
    mkdir -p "${TMP}/${binary}"
    ln -sf "${TOOLS}/${binary}" "${TMP}/${binary}/helm"
    echo "== ct lint with $("${TOOLS}/${binary}" version --short)"
    (cd "${ROOT}" && PATH="${TMP}/${binary}:${PATH}" ct lint --target-branch "${TARGET_BRANCH}" \
      --chart-dirs charts "${extra[@]}")
  done
}

main "$@"
