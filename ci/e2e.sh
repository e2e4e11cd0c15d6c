#!/usr/bin/env bash
# e2e.sh — the end-to-end scenarios on a Kind cluster that already runs TTG
# (make kind-up), then the evidence: logs, status, events.
#   SCENARIO=all|worker-sigkill|broker-restart|broker-node-sigkill|network-policy (default all)
#   ARTIFACTS=dir
#   (broker-node-sigkill needs a RabbitMQ cluster: kind/up.sh with BACKEND=rabbitmq-cluster;
#   on a single broker it is skipped)
#   NAMESPACE=ttg RELEASE=ttg (where kind/up.sh installed it)
set -euo pipefail

readonly SCENARIO="${SCENARIO:-all}"
readonly NAMESPACE="${NAMESPACE:-ttg}"
readonly RELEASE="${RELEASE:-ttg}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly ARTIFACTS="${ARTIFACTS:-${ROOT}/out/e2e}"
readonly KUBECONFIG_FILE="${KUBECONFIG:-${HOME}/.kube/config}"

# One line on what is missing and how to get it, then exit 2.
missing() {
  echo "e2e: $* — create the cluster with \`make kind-up\` (needs kind, kubectl, docker), then run \`make e2e\` again" >&2
  exit 2
}

preflight() {
  command -v kubectl >/dev/null || missing "kubectl not found"
  [ -f "${KUBECONFIG_FILE}" ] || missing "no kubeconfig at ${KUBECONFIG_FILE}"
  kubectl --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=10s get namespace "${NAMESPACE}" >/dev/null 2>&1 \
    || missing "no cluster reachable with namespace ${NAMESPACE}"
  kubectl --kubeconfig "${KUBECONFIG_FILE}" -n "${NAMESPACE}" get "deploy/${RELEASE}-worker" >/dev/null 2>&1 \
    || missing "TTG release ${RELEASE} not installed in namespace ${NAMESPACE}"
  case "${SCENARIO}" in
    all | worker-sigkill | broker-restart | broker-node-sigkill | network-policy) ;;
    *) echo "e2e: SCENARIO=${SCENARIO}: use all, worker-sigkill, broker-restart, broker-node-sigkill or network-policy" >&2; exit 2 ;;
  esac
  version_skew
}

# kubectl supports a server one minor version away at most; the workflow pins
# kubectl to the server's version (.github/workflows/e2e.yaml, matrix.kubectl).
version_skew() {
  local versions client server
  versions="$(kubectl --kubeconfig "${KUBECONFIG_FILE}" version -o json 2>/dev/null)" || return 0
  client="$(minor clientVersion <<<"${versions}")"
  server="$(minor serverVersion <<<"${versions}")"
  [ -n "${client}" ] && [ -n "${server}" ] || return 0
  if [ "$((client > server ? client - server : server - client))" -gt 1 ]; then
    echo "e2e: kubectl 1.${client} cannot drive a 1.${server} server (at most one minor apart): install kubectl 1.${server}" >&2
    exit 2
  fi
}

# The minor version of `kubectl version -o json`'s clientVersion or serverVersion, on stdin.
minor() {
  python3 -c 'import json, re, sys; print(re.sub(r"\D", "", json.load(sys.stdin)[sys.argv[1]]["minor"]))' "$1"
}

collect() {
  mkdir -p "${ARTIFACTS}"
  local k=(kubectl --kubeconfig "${KUBECONFIG_FILE}" -n "${NAMESPACE}")
  "${k[@]}" get all,events -o wide >"${ARTIFACTS}/resources.txt" 2>&1 || true
  "${k[@]}" describe pods >"${ARTIFACTS}/pods.txt" 2>&1 || true
  "${k[@]}" get events --sort-by=.lastTimestamp >"${ARTIFACTS}/events.txt" 2>&1 || true
  local pod
  for pod in $("${k[@]}" get pods -o name); do
    "${k[@]}" logs --all-containers --prefix --previous "${pod}" \
      >"${ARTIFACTS}/$(basename "${pod}").previous.log" 2>/dev/null || true
    "${k[@]}" logs --all-containers --prefix "${pod}" \
      >"${ARTIFACTS}/$(basename "${pod}").log" 2>&1 || true
  done
}

main() {
  preflight
  trap collect EXIT
  local select=()
  if [ "${SCENARIO}" != all ]; then
    select=(-k "${SCENARIO//-/_}")
  fi
  mkdir -p "${ARTIFACTS}"
  NAMESPACE="${NAMESPACE}" RELEASE="${RELEASE}" \
    "${ROOT}/.venv/bin/python" -m pytest "${ROOT}/tests/e2e" -m e2e "${select[@]}" \
    -p no:cacheprovider --k8s-provider external \
    --k8s-kubeconfig-override "${KUBECONFIG_FILE}" \
    --junitxml "${ARTIFACTS}/junit.xml"
}

main "$@"
