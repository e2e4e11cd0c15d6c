#!/usr/bin/env bash
# e2e.sh — one end-to-end scenario on a Kind cluster that already runs TTG
# (kind/up.sh), then the evidence: on failure, logs, status, events.
#   SCENARIO=worker-sigkill|broker-restart   BACKEND=redis|rabbitmq   ARTIFACTS=dir
set -euo pipefail

readonly SCENARIO="${SCENARIO:?set SCENARIO}"
readonly NAMESPACE="${NAMESPACE:-ttg}"
readonly RELEASE="${RELEASE:-ttg}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly ARTIFACTS="${ARTIFACTS:-${ROOT}/out/e2e}"

collect() {
  mkdir -p "${ARTIFACTS}"
  kubectl -n "${NAMESPACE}" get all,events -o wide >"${ARTIFACTS}/resources.txt" 2>&1 || true
  kubectl -n "${NAMESPACE}" describe pods >"${ARTIFACTS}/pods.txt" 2>&1 || true
  kubectl -n "${NAMESPACE}" get events --sort-by=.lastTimestamp >"${ARTIFACTS}/events.txt" 2>&1 || true
  local pod
  for pod in $(kubectl -n "${NAMESPACE}" get pods -o name); do
    kubectl -n "${NAMESPACE}" logs --all-containers --prefix --previous "${pod}" \
      >"${ARTIFACTS}/$(basename "${pod}").previous.log" 2>/dev/null || true
    kubectl -n "${NAMESPACE}" logs --all-containers --prefix "${pod}" \
      >"${ARTIFACTS}/$(basename "${pod}").log" 2>&1 || true
  done
  kubectl -n "${NAMESPACE}" exec "deploy/${RELEASE}-worker" -- ttg status --run e2e --json \
    >"${ARTIFACTS}/status.json" 2>&1 || true
}

main() {
  trap collect EXIT
  "${ROOT}/.venv/bin/python" -m pytest "${ROOT}/tests/e2e" -m e2e -k "${SCENARIO//-/_}" \
    -p no:cacheprovider --k8s-provider external \
    --k8s-kubeconfig-override "${KUBECONFIG:-${HOME}/.kube/config}" \
    --junitxml "${ARTIFACTS}/junit.xml"
}

main "$@"
