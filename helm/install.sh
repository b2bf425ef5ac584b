#!/usr/bin/env bash
# Install or upgrade medlake on the current kubectl context: the official dagster/dagster chart, pinned to
# the Dagster version in uv.lock, with helm/medlake/values.yaml and the image built from this commit.
# Usage: IMAGE_REPOSITORY=<registry>/medlake helm/install.sh [extra helm flags, e.g. -f my-site.yaml]
# Prerequisites (docs/deploy.md): the image pushed with the git sha tag, the namespace and the Secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART_VERSION=1.13.27
NAMESPACE="${NAMESPACE:-medlake}"
RELEASE="${RELEASE:-medlake}"
IMAGE_REPOSITORY="${IMAGE_REPOSITORY:?set IMAGE_REPOSITORY to the registry path the image was pushed to}"
IMAGE_TAG="${IMAGE_TAG:-$(git rev-parse --short=12 HEAD)}"
if [ "$IMAGE_TAG" = "latest" ]; then
  echo "refusing the tag 'latest': run pods must start the exact image their code location served" >&2
  exit 1
fi
helm repo add dagster https://dagster-io.github.io/helm >/dev/null 2>&1 || true
helm repo update dagster
helm upgrade --install "$RELEASE" dagster/dagster \
  --namespace "$NAMESPACE" \
  --version "$CHART_VERSION" \
  -f helm/medlake/values.yaml \
  --set "dagster-user-deployments.deployments[0].image.repository=$IMAGE_REPOSITORY" \
  --set "dagster-user-deployments.deployments[0].image.tag=$IMAGE_TAG" \
  --wait --timeout 10m \
  "$@"
