#!/usr/bin/env bash
# down.sh — delete the Kind cluster kind/up.sh made.
set -euo pipefail

readonly CLUSTER="${CLUSTER:-ttg}"

main() {
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    kind delete cluster --name "${CLUSTER}"
  else
    echo "kind/down.sh: no cluster ${CLUSTER}" >&2
  fi
}

main "$@"
