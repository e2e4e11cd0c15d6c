#!/usr/bin/env bash
# up.sh — a Kind cluster with TTG installed: create the cluster (unless it
# exists), build the worker image, load it into the nodes, install the chart.
#   BACKEND=redis|rabbitmq (default redis)   SKIP_CLUSTER=1 (cluster made elsewhere, e.g. kind-action)
set -euo pipefail

readonly KIND_VERSION="v0.27.0"
readonly KIND_NODE_IMAGE="kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f"
readonly CLUSTER="${CLUSTER:-ttg}"
readonly BACKEND="${BACKEND:-redis}"
readonly NAMESPACE="${NAMESPACE:-ttg}"
readonly RELEASE="${RELEASE:-ttg}"
readonly IMAGE="ttg-worker:dev"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
HELM="${HELM:-${ROOT}/.tools/bin/helm}"

log() { printf 'kind/up.sh: %s\n' "$*" >&2; }

require() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null || { log "missing ${tool}"; exit 2; }
  done
}

create_cluster() {
  if [ "${SKIP_CLUSTER:-0}" = 1 ]; then
    return
  fi
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    log "cluster ${CLUSTER} exists"
    return
  fi
  local have
  have="$(kind version | awk '{print $2}')"
  [ "${have}" = "${KIND_VERSION}" ] || log "warning: kind ${have}, tested with ${KIND_VERSION}"
  kind create cluster --name "${CLUSTER}" --image "${KIND_NODE_IMAGE}" \
    --config "${ROOT}/kind/cluster.yaml" --wait 180s
}

load_image() {
  docker build --tag "${IMAGE}" "${ROOT}/worker"
  kind load docker-image "${IMAGE}" --name "${CLUSTER}"
}

install_chart() {
  local values=(--values "${ROOT}/values/kind.yaml")
  if [ "${BACKEND}" = rabbitmq ]; then
    values+=(--values "${ROOT}/values/rabbitmq.yaml")
  fi
  # --wait covers the broker and workers; --wait-for-jobs covers the seeding hook.
  "${HELM}" upgrade --install "${RELEASE}" "${ROOT}/charts/ttg" \
    --namespace "${NAMESPACE}" --create-namespace "${values[@]}" \
    --wait --wait-for-jobs --timeout 10m
  kubectl -n "${NAMESPACE}" rollout status "deploy/${RELEASE}-worker" --timeout=300s
}

main() {
  require kind kubectl docker
  [ -x "${HELM}" ] || make -C "${ROOT}" tools
  create_cluster
  load_image
  install_chart
  log "TTG (${BACKEND}) is up in namespace ${NAMESPACE}"
}

main "$@"
