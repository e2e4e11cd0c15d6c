#!/usr/bin/env bash
# ensure-packages.sh — the Debian packages `make test` needs, installed when missing:
#   redis-server, rabbitmq-server   brokers the integration and fault suites start on free ports
#   chromium, fonts-dejavu-core     the headless browser the report test opens (DejaVu: the
#                                   family matplotlib lays the report's charts out with)
#   prometheus                      promtool and a real Prometheus 2.42 for the monitoring tests
# Packages that start a system service on a default port have it stopped: the tests
# always start their own, on free ports, with their own configuration.
set -euo pipefail

# what must exist : its Debian package : the service it starts ("" if none).
# A bare name is looked up on PATH (and /usr/sbin, which a non-root PATH may lack).
readonly NEEDED=(
  "redis-server:redis-server:redis-server"
  "rabbitmq-server:rabbitmq-server:rabbitmq-server"
  "/usr/bin/chromium:chromium:"
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core:"
  "prometheus:prometheus:prometheus"
  "promtool:prometheus:"
)

log() { echo "ensure-packages: $*" >&2; }

present() {
  local what="$1"
  case "$what" in
    /*) [ -e "$what" ] ;;
    *) command -v "$what" >/dev/null || [ -x "/usr/sbin/$what" ] ;;
  esac
}

main() {
  local entry what pkg service sudo="" pkgs=() services=()
  for entry in "${NEEDED[@]}"; do
    IFS=: read -r what pkg service <<<"$entry"
    if ! present "$what"; then
      pkgs+=("$pkg")
      [ -n "$service" ] && services+=("$service")
    fi
  done
  if [ "${#pkgs[@]}" -eq 0 ]; then
    return 0
  fi
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  log "installing ${pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Without recommends: no node exporter beside Prometheus, no extra services.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${pkgs[@]}" >/dev/null
  for service in "${services[@]}"; do
    $sudo service "$service" stop >/dev/null 2>&1 || true
  done
}

main "$@"
