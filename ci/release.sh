#!/usr/bin/env bash
# release.sh — the steps of .github/workflows/release.yaml (a v* tag), each
# runnable on its own:
#   check-tag TAG                    TAG is v<version>, and Chart.yaml version == appVersion
#   image-ref                        version=... and image=ghcr.io/<owner>/ttg-worker:<appVersion>
#                                    (lines for $GITHUB_OUTPUT)
#   sign-image IMAGE@DIGEST SBOM     cosign keyless signature, and the SPDX SBOM attested, on the
#                                    image; then verified as the README tells users to
#   package DIR                      the chart, its image this owner's and pinned by IMAGE_DIGEST
#                                    (the digest the image job pushed and signed), packaged into DIR
#   push-chart DIR                   helm push DIR/ttg-<version>.tgz to oci://ghcr.io/<owner>/charts,
#                                    sign it, verify the signature as the README does
#   check-public                     can anyone pull the image and the chart? GitHub creates new
#                                    packages private: if not, a warning says how to make them public
# Needs GITHUB_REPOSITORY_OWNER (image-ref, package, push-chart, check-public), GITHUB_REPOSITORY
# and GITHUB_REF (the signer's identity: sign-image, push-chart), GITHUB_ACTOR and GITHUB_TOKEN
# (push-chart). Keyless signing needs the job's id-token permission.
# The publishing jobs run only after the whole CI and e2e suites passed on the tagged
# commit (.github/workflows/release.yaml calls ci.yaml and e2e.yaml first).
set -euo pipefail

readonly REGISTRY="ghcr.io"
# The registry's HTTP API (check-public); a test points it at a local server.
readonly REGISTRY_API="${REGISTRY_API:-https://ghcr.io}"
readonly DEFAULT_IMAGE="ghcr.io/ttg-sweeps/ttg-worker"
# Who signs a release: this repository's release workflow, at the tag it runs for.
readonly OIDC_ISSUER="https://token.actions.githubusercontent.com"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly CHART_DIR="${ROOT}/charts/ttg"
readonly HELM="${HELM:-${ROOT}/.tools/bin/helm}"

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

# The certificate identity of this release's keyless signatures: the release
# workflow of this repository, run for this tag.
signer() {
  echo "https://github.com/${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY}/.github/workflows/release.yaml@${GITHUB_REF:?set GITHUB_REF}"
}

# What a user runs before admitting the image or the chart (README.md, Deploying).
verify_signature() {
  cosign verify "$1" --certificate-identity "$(signer)" --certificate-oidc-issuer "${OIDC_ISSUER}" >/dev/null
  log "signature of $1 verified: signed by $(signer)"
}

sign_image() {
  local ref="${1:?usage: sign-image IMAGE@DIGEST SBOM}" sbom="${2:?usage: sign-image IMAGE@DIGEST SBOM}"
  [[ "${ref}" == *@sha256:* ]] || die "sign ${ref} by digest (IMAGE@sha256:...), never by tag"
  # Keyless: the certificate names this workflow run (GitHub's OIDC token).
  cosign sign --yes "${ref}"
  cosign attest --yes --type spdxjson --predicate "${sbom}" "${ref}"
  verify_signature "${ref}"
}

package_chart() {
  local out="${1:?usage: package DIR}" work image
  local digest="${IMAGE_DIGEST:?set IMAGE_DIGEST to the digest the image job pushed (sha256:...)}"
  [[ "${digest}" =~ ^sha256:[0-9a-f]{64}$ ]] || die "IMAGE_DIGEST ${digest} is not sha256:<64 hex digits>"
  image="${REGISTRY}/$(owner)/ttg-worker"
  work="$(mktemp -d)"
  cp -R "${CHART_DIR}" "${work}/ttg"
  # The published chart runs the image this owner's release pushed, by the
  # digest that was built and signed: a tag can be moved, a digest cannot.
  sed -i -e "s#^  repository: ${DEFAULT_IMAGE}\$#  repository: ${image}#" \
    -e "s#^  digest: \"\"\$#  digest: \"${digest}\"#" "${work}/ttg/values.yaml"
  grep -q "^  repository: ${image}\$" "${work}/ttg/values.yaml" \
    || die "values.yaml has no image.repository ${DEFAULT_IMAGE} to point at this owner's image"
  grep -q "^  digest: \"${digest}\"\$" "${work}/ttg/values.yaml" \
    || die "values.yaml has no empty image.digest to pin"
  [ -x "${HELM}" ] || bash "${ROOT}/ci/ensure-helm" 4 "$(dirname "${HELM}")"
  mkdir -p "${out}"
  "${HELM}" lint --strict "${work}/ttg" >&2
  # Every pod of the worker image runs exactly that image.
  "${HELM}" template ttg "${work}/ttg" | grep -q "image: \"${image}:[^\"]*@${digest}\"" \
    || die "the packaged chart does not render its image as ${image}:<tag>@${digest}"
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
  verify_signature "${REGISTRY}/$(owner)/charts/ttg@${digest}"
  log "helm install ttg oci://${REGISTRY}/$(owner)/charts/ttg --version ${version}"
}

# 0 when anonymous clients may pull REPOSITORY:TAG from the registry.
pullable() {
  local repository="$1" tag="$2" token
  token="$(curl -fsS "${REGISTRY_API}/token?scope=repository:${repository}:pull" \
    | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')" || return 1
  [ -n "${token}" ] || return 1
  curl -fsS -o /dev/null -I -H "Authorization: Bearer ${token}" \
    -H "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json" \
    "${REGISTRY_API}/v2/${repository}/manifests/${tag}"
}

# GitHub creates a new package private, and no API changes that: the first
# release of an owner publishes packages nobody else can pull. Say so, loudly,
# without failing a release that did publish.
check_public() {
  local version private=()
  version="$(chart_field version)"
  pullable "$(owner)/ttg-worker" "$(chart_field appVersion)" || private+=("$(owner)/ttg-worker")
  pullable "$(owner)/charts/ttg" "${version}" || private+=("$(owner)/charts/ttg")
  if [ "${#private[@]}" -eq 0 ]; then
    log "the image and the chart ${version} can be pulled without credentials"
    return 0
  fi
  local message="not pullable without credentials: ${private[*]}. GitHub creates new packages private: an owner makes each public once, on github.com (the package's Package settings, Change visibility, Public); later releases stay public."
  echo "::warning title=Packages are private::${message}"
  log "${message}"
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
    check-public) check_public ;;
    *) die "usage: release.sh check-tag TAG | image-ref | sign-image IMAGE@DIGEST SBOM | package DIR | push-chart DIR | check-public" ;;
  esac
}

main "$@"
