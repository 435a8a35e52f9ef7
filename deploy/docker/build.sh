#!/usr/bin/env bash
# Build (and with --push, push) both nbtl images, tagged with the version in pyproject.toml:
#   ghcr.io/nbtl/nbtl:<version>      CPU  (rayproject/ray:<ray>-py311)
#   ghcr.io/nbtl/nbtl:<version>-gpu  CUDA (rayproject/ray:<ray>-py311-gpu)
# Usage: deploy/docker/build.sh [--push]   (IMAGE=registry/name overrides ghcr.io/nbtl/nbtl)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE="${IMAGE:-ghcr.io/nbtl/nbtl}"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)"
[ -n "$VERSION" ] || { echo "build.sh: no version in pyproject.toml" >&2; exit 1; }
for variant in "" "-gpu"; do
    docker build -f deploy/docker/Dockerfile --build-arg VARIANT="$variant" --build-arg NBTL_VERSION="$VERSION" \
        -t "$IMAGE:$VERSION$variant" .
done
if [ "${1:-}" = "--push" ]; then
    for variant in "" "-gpu"; do docker push "$IMAGE:$VERSION$variant"; done
fi
