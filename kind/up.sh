#!/usr/bin/env bash
# up.sh — a Kind cluster with TTG installed: create the cluster (unless it
# exists), build the worker image, load it and the broker's image into the
# nodes, install the chart.
#   BACKEND=redis|rabbitmq|rabbitmq-cluster (default redis; rabbitmq-cluster: three
#   RabbitMQ nodes, one per Kind worker)   SKIP_CLUSTER=1 (cluster made elsewhere, e.g. kind-action)
#   RESULTS=broker|file (default broker; file: results as Parquet on a volume all nodes share)
#   kind/up.sh images   prints the images it pulls once on the host and loads into the nodes
#
# Images are pulled by the host, once, and loaded with `kind load`: the nodes
# never pull (every image the chart renders for Kind is IfNotPresent or Never),
# so neither anonymous Docker Hub rate limits nor three nodes pulling the same
# image stand between a run and its cluster.
#
# NetworkPolicy: Kind's default CNI, kindnet, enforces it since kind v0.24
# (kube-network-policies), port ranges (`endPort`) included, which a RabbitMQ
# cluster's stream replication ports need; the e2e suite checks it
# (tests/e2e: network-policy). Do not disable the default CNI in kind/cluster.yaml.
set -euo pipefail

# The newest pair the e2e workflow tests (its matrix also runs 1.29 and 1.31).
readonly KIND_VERSION="${KIND_VERSION:-v0.31.0}"
readonly KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.3@sha256:08497ee19eace7b4b5348db5c6a1591d7752b164530a36f855cb0f2bdcbadd48}"
readonly CLUSTER="${CLUSTER:-ttg}"
readonly BACKEND="${BACKEND:-redis}"
readonly RESULTS="${RESULTS:-broker}"
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

# The chart's values for BACKEND, one word per line (for mapfile).
chart_values() {
  printf '%s\n' --values "${ROOT}/values/kind.yaml"
  case "${BACKEND}" in
    redis) ;;
    rabbitmq) printf '%s\n' --values "${ROOT}/values/rabbitmq.yaml" ;;
    rabbitmq-cluster) printf '%s\n' --values "${ROOT}/values/rabbitmq.yaml" --set rabbitmq.replicas=3 ;;
    *) log "BACKEND=${BACKEND}: use redis, rabbitmq or rabbitmq-cluster"; exit 2 ;;
  esac
  case "${RESULTS}" in
    broker) ;;
    file) printf '%s\n' --values "${ROOT}/values/kind-file-store.yaml" ;;
    *) log "RESULTS=${RESULTS}: use broker or file"; exit 2 ;;
  esac
}

# Every image the chart runs on Kind but the worker image built here.
chart_images() {
  local values
  mapfile -t values < <(chart_values)
  "${HELM}" template "${RELEASE}" "${ROOT}/charts/ttg" --namespace "${NAMESPACE}" "${values[@]}" \
    | sed -n 's/^ *image: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' | sort -u | grep -vx "${IMAGE}"
}

pull() {
  local image="$1" attempt
  for attempt in 1 2 3 4 5; do
    docker pull --quiet "${image}" >/dev/null && return 0
    log "docker pull ${image} failed (attempt ${attempt}); retrying in $((attempt * 10)) s"
    sleep $((attempt * 10))
  done
  log "could not pull ${image}"
  exit 1
}

load_images() {
  docker build --tag "${IMAGE}" "${ROOT}/worker"
  kind load docker-image "${IMAGE}" --name "${CLUSTER}"
  local image images
  mapfile -t images < <(chart_images)
  for image in "${images[@]}"; do
    pull "${image}"
    kind load docker-image "${image}" --name "${CLUSTER}"
  done
}

# The file store's volume: the host directory every node mounts (kind/cluster.yaml),
# writable by the pods' user (a bind mount keeps the host's owner: root), offered as
# a ReadWriteMany PersistentVolume.
shared_volume() {
  local node
  for node in $(kind get nodes --name "${CLUSTER}"); do
    docker exec "${node}" sh -c 'test -d /var/ttg-results && chmod 1777 /var/ttg-results'
  done
  kubectl apply -f "${ROOT}/kind/results-pv.yaml"
}

install_chart() {
  local values
  mapfile -t values < <(chart_values)
  if [ "${RESULTS}" = file ]; then
    shared_volume
  fi
  # A worker image from before `ttg exporter` existed cannot run the exporter.
  if ! docker run --rm "${IMAGE}" exporter --help >/dev/null 2>&1; then
    log "${IMAGE} has no \`ttg exporter\`: installing without the exporter"
    values+=(--set exporter.enabled=false)
  fi
  # --wait covers the broker and workers; --wait-for-jobs covers the seeding hook.
  "${HELM}" upgrade --install "${RELEASE}" "${ROOT}/charts/ttg" \
    --namespace "${NAMESPACE}" --create-namespace "${values[@]}" \
    --wait --wait-for-jobs --timeout 10m
  kubectl -n "${NAMESPACE}" rollout status "deploy/${RELEASE}-worker" --timeout=300s
}

main() {
  # An unknown BACKEND stops here (the process substitutions below would hide it).
  chart_values >/dev/null
  if [ "${1:-}" = images ]; then
    chart_images
    return
  fi
  require kind kubectl docker
  [ -x "${HELM}" ] || make -C "${ROOT}" tools
  create_cluster
  load_images
  install_chart
  log "TTG (${BACKEND}) is up in namespace ${NAMESPACE}"
}

main "$@"
