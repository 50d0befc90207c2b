#!/usr/bin/env bash
# Delete the kind cluster that deploy/kind/up.sh created (and everything in it).
set -euo pipefail
CLUSTER="${KIND_CLUSTER:-tuneforge}"
if command -v podman >/dev/null 2>&1 && ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
  export KIND_EXPERIMENTAL_PROVIDER=podman
fi
kind delete cluster --name "${CLUSTER}"
