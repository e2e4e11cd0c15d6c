#!/usr/bin/env bash
# ensure-prometheus.sh — make sure `prometheus` and `promtool` are on PATH for the
# monitoring tests (tests/chart/test_monitoring.py): promtool checks and unit-tests
# the chart's PrometheusRule, and a real Prometheus server of the tests' own (own
# port, config and data directory) scrapes live workers and the exporter.
# Installs Debian's `prometheus` package when a binary is missing; does nothing
# otherwise.
set -euo pipefail

# Debian 12's package: Prometheus 2.42, the server and promtool.
readonly PACKAGE="prometheus"
readonly BINARIES=(prometheus promtool)

log() { echo "ensure-prometheus: $*" >&2; }

missing() {
  local bin
  for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null || return 0
  done
  return 1
}

main() {
  if ! missing; then
    return 0
  fi
  log "installing ${PACKAGE}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Without recommends: no node exporter, no second service.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGE}" >/dev/null
  # The package starts a system Prometheus on :9090; the tests never use it (they
  # start their own on a free port), so stop it to free memory and the port.
  $sudo service prometheus stop >/dev/null 2>&1 || true
  log "$(promtool --version 2>&1 | head -n 1)"
}

main "$@"
