#!/usr/bin/env bash
# lock-worker-deps.sh — regenerate worker/requirements.lock (make lock): every
# package the worker image installs, pinned, with the sha256 of every file PyPI
# has for that version (so one lock serves amd64 and arm64 builds). The image
# installs it with `pip install --require-hashes`. Runs pip-compile (pip-tools)
# from a throwaway venv; the package's own dependency ranges stay in
# worker/pyproject.toml.
set -euo pipefail

readonly PIP_TOOLS_VERSION="7.6.2"
# The image's Python minor: markers and wheels are resolved for it.
readonly PYTHON="${PYTHON:-python3.11}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT

TMP=""
cleanup() { [ -z "${TMP}" ] || rm -rf "${TMP}"; }

main() {
  trap cleanup EXIT
  TMP="$(mktemp -d)"
  # PyPI only: a machine's pip config (mirrors, find-links, constraints) must not
  # leak files or hashes into the lock.
  export PIP_CONFIG_FILE=/dev/null
  unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
  "${PYTHON}" -m venv "${TMP}/venv"
  "${TMP}/venv/bin/pip" install --quiet "pip-tools==${PIP_TOOLS_VERSION}"
  cd "${ROOT}/worker"
  # The lock's header names the command to run again.
  # The image installs the parquet extra: workers write runs' results stores.
  CUSTOM_COMPILE_COMMAND="make lock" "${TMP}/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --extra parquet \
    --build-deps-for wheel --index-url https://pypi.org/simple --no-emit-index-url \
    --output-file requirements.lock pyproject.toml
  rm -rf src/*.egg-info
  echo "lock-worker-deps: wrote worker/requirements.lock" >&2
}

main "$@"
