#!/usr/bin/env bash
# build-images.sh — build the worker image, then the example's image FROM it, the way
# a user of examples/README.md does, and run each once. CI runs it on every change
# (this development machine has no Docker engine; GitHub's runners do).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly EXAMPLE_TAG="sweep-sim-worker:ci"

log() { echo "build-images: $*" >&2; }

app_version() {
  sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${ROOT}/charts/ttg/Chart.yaml"
}

main() {
  local version worker
  version="$(app_version)"
  worker="ghcr.io/ttg-sweeps/ttg-worker:${version}"
  log "worker image ${worker}"
  docker build --tag "${worker}" "${ROOT}/worker"
  docker run --rm "${worker}" --version
  log "example image ${EXAMPLE_TAG} FROM ${worker}"
  docker build --build-arg "TTG_VERSION=${version}" --tag "${EXAMPLE_TAG}" "${ROOT}/examples/sweep-sim"
  # The example's compute imports in the image, as the non-root user the chart runs.
  docker run --rm --read-only --user 10001:10001 --entrypoint /opt/ttg/bin/python "${EXAMPLE_TAG}" \
    -c 'import sweep_sim.oscillator as o; print(o.simulate({"omega": 1, "zeta": 0.2, "dt": 0.01, "t_end": 1})["regime"])'
}

main "$@"
