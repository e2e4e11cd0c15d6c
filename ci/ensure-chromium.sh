#!/usr/bin/env bash
# ensure-chromium.sh — make sure headless Chromium is there for the report's
# browser test (tests/integration/test_report_browser.py opens the HTML that
# `ttg report` writes and checks it renders without errors). Installs Debian's
# `chromium` package when the binary is missing; does nothing otherwise.
set -euo pipefail

# Debian's package puts the browser here; the test looks for the same path.
readonly CHROMIUM_BIN="/usr/bin/chromium"
# The browser draws the report's text with system fonts; DejaVu is the family
# matplotlib lays the charts out with, so labels fit where they were measured.
readonly PACKAGES=(chromium fonts-dejavu-core)

log() { echo "ensure-chromium: $*" >&2; }

main() {
  if [ -x "${CHROMIUM_BIN}" ] && fc-list 2>/dev/null | grep -qi dejavu; then
    return 0
  fi
  log "installing ${PACKAGES[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${PACKAGES[@]}" >/dev/null
  log "$("${CHROMIUM_BIN}" --version)"
}

main "$@"
