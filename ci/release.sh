#!/usr/bin/env bash
# release.sh — the steps of .github/workflows/release.yaml (a v* tag), each
# runnable on its own:
#   check-tag TAG                    TAG is v<version>, and Chart.yaml version == appVersion
#   image-ref                        version=... and image=ghcr.io/<owner>/ttg-worker:<appVersion>
#                                    (lines for $GITHUB_OUTPUT)
#   sign-image IMAGE@DIGEST SBOM     cosign keyless signature, and the SPDX SBOM attested, on the image
#   package DIR                      the chart, its default image pointing at this owner's, packaged into DIR
#   push-chart DIR                   helm push DIR/ttg-<version>.tgz to oci://ghcr.io/<owner>/charts, then sign it
# Needs GITHUB_REPOSITORY_OWNER (image-ref, package, push-chart), and GITHUB_ACTOR
# and GITHUB_TOKEN (push-chart). Keyless signing needs the job's id-token permission.
set -euo pipefail

readonly REGISTRY="ghcr.io"
readonly DEFAULT_IMAGE="ghcr.io/ttg-sweeps/ttg-worker"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly CHART_DIR="${ROOT}/charts/ttg"
readonly HELM="${ROOT}/.tools/bin/helm"

die() { echo "release.sh: $*" >&2; exit 1; }
log() { echo "release.sh: $*" >&2; }

# A top-level field of Chart.yaml, quotes removed (indented `version:` of the
# dependencies do not match).
chart_field() {
  sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *\$/\1/p" "${CHART_DIR}/Chart.yaml"
}

# Registry paths are lower case; GitHub owners need not be.
owner() {
  local owner="${GITHUB_REPOSITORY_OWNER:?set GITHUB_REPOSITORY_OWNER}"
  echo "${owner,,}"
}

check_tag() {
  local tag="${1:?usage: check-tag TAG}" version app
  version="$(chart_field version)"
  app="$(chart_field appVersion)"
  [ -n "${version}" ] && [ -n "${app}" ] || die "no version or appVersion in ${CHART_DIR}/Chart.yaml"
  [ "${tag}" = "v${version}" ] \
    || die "tag ${tag} is not v<chart version>: Chart.yaml has version ${version}; bump it (and appVersion) or tag v${version}"
  [ "${app}" = "${version}" ] \
    || die "Chart.yaml version ${version} and appVersion ${app} differ: the chart and its image are released together under one tag"
  log "tag ${tag}: chart ${version}, image ${app}"
}

image_ref() {
  local app
  app="$(chart_field appVersion)"
  echo "version=${app}"
  echo "image=${REGISTRY}/$(owner)/ttg-worker:${app}"
}

sign_image() {
  local ref="${1:?usage: sign-image IMAGE@DIGEST SBOM}" sbom="${2:?usage: sign-image IMAGE@DIGEST SBOM}"
  [[ "${ref}" == *@sha256:* ]] || die "sign ${ref} by digest (IMAGE@sha256:...), never by tag"
  # Keyless: the certificate names this workflow run (GitHub's OIDC token).
  cosign sign --yes "${ref}"
  cosign attest --yes --type spdxjson --predicate "${sbom}" "${ref}"
}

package_chart() {
  local out="${1:?usage: package DIR}" work
  work="$(mktemp -d)"
  cp -R "${CHART_DIR}" "${work}/ttg"
  # The published chart runs the image this owner's release pushed.
  sed -i "s#repository: ${DEFAULT_IMAGE}\$#repository: ${REGISTRY}/$(owner)/ttg-worker#" "${work}/ttg/values.yaml"
  grep -q "repository: ${REGISTRY}/$(owner)/ttg-worker\$" "${work}/ttg/values.yaml" \
    || die "values.yaml has no image.repository ${DEFAULT_IMAGE} to point at this owner's image"
  [ -x "${HELM}" ] || bash "${ROOT}/ci/ensure-helm" 4 "$(dirname "${HELM}")"
  mkdir -p "${out}"
  "${HELM}" lint --strict "${work}/ttg" >&2
  "${HELM}" package "${work}/ttg" --destination "${out}" >&2
  rm -rf "${work}"
}

push_chart() {
  local dir="${1:?usage: push-chart DIR}" version package output digest
  version="$(chart_field version)"
  package="${dir}/ttg-${version}.tgz"
  [ -f "${package}" ] || die "${package} missing: run release.sh package ${dir} first"
  printf '%s' "${GITHUB_TOKEN:?set GITHUB_TOKEN}" \
    | "${HELM}" registry login "${REGISTRY}" --username "${GITHUB_ACTOR:?set GITHUB_ACTOR}" --password-stdin
  output="$("${HELM}" push "${package}" "oci://${REGISTRY}/$(owner)/charts" 2>&1)"
  echo "${output}"
  digest="$(sed -n 's/^Digest: *//p' <<<"${output}")"
  [ -n "${digest}" ] || die "helm push printed no digest"
  cosign sign --yes "${REGISTRY}/$(owner)/charts/ttg@${digest}"
  log "helm install ttg oci://${REGISTRY}/$(owner)/charts/ttg --version ${version}"
}

main() {
  local command="${1:-}"
  shift || true
  case "${command}" in
    check-tag) check_tag "$@" ;;
    image-ref) image_ref ;;
    sign-image) sign_image "$@" ;;
    package) package_chart "$@" ;;
    push-chart) push_chart "$@" ;;
    *) die "usage: release.sh check-tag TAG | image-ref | sign-image IMAGE@DIGEST SBOM | package DIR | push-chart DIR" ;;
  esac
}

main "$@"
