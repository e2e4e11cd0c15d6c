#!/usr/bin/env bash
# ensure-brokers.sh — make sure the broker binaries the tests start are on PATH.
# The integration and fault suites start their own redis-server and
# rabbitmq-server processes on free ports; this installs the Debian packages
# when a binary is missing (fresh CI machine), and does nothing otherwise.
set -euo pipefail

# binary:package pairs; the tests need Redis >= 6.2 (XAUTOCLAIM-era streams) and RabbitMQ >= 3.10.
readonly NEEDED=("redis-server:redis-server" "rabbitmq-server:rabbitmq-server")

log() { echo "ensure-brokers: $*" >&2; }

missing_packages() {
  local pair bin pkg
  for pair in "${NEEDED[@]}"; do
    bin="${pair%%:*}"
    pkg="${pair##*:}"
    # rabbitmq-server lives in /usr/sbin, which a non-root PATH may lack.
    if ! command -v "$bin" >/dev/null && [ ! -x "/usr/sbin/$bin" ]; then
      echo "$pkg"
    fi
  done
}

main() {
  local pkgs
  mapfile -t pkgs < <(missing_packages)
  if [ "${#pkgs[@]}" -eq 0 ]; then
    return 0
  fi
  log "installing ${pkgs[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # The packages start system services on their default ports; the tests never
  # use those (they start their own), so stop them to free memory and ports.
  $sudo service redis-server stop >/dev/null 2>&1 || true
  $sudo service rabbitmq-server stop >/dev/null 2>&1 || true
}

main "$@"
