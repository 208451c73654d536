#!/usr/bin/env bash
# Builds the image as users do (`docker build -t flbackdoor:latest .`), tagged $FLBACKDOOR_IMAGE.
# The base: the public Python image when the engine already has it (or FLBACKDOOR_LOCAL_BASE=0:
# then `docker build` pulls it as usual); otherwise (FLBACKDOOR_LOCAL_BASE=1, or unset and the
# public image absent, as on this project's machines and CI, where no container registry is
# reachable) the local stand-in of scripts/docker-base.sh. Everything after FROM is the same. Layers are cached by the engine: a rebuild after a
# source change redoes only the last one (seconds); torch's layer stays as long as the base does.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${FLBACKDOOR_IMAGE:-flbackdoor:latest}
args=()
local_base=${FLBACKDOOR_LOCAL_BASE:-}
if [[ -z $local_base ]]; then
    local_base=1
    docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 && local_base=0
fi
if [[ $local_base == 1 ]]; then
    scripts/docker-base.sh
    args+=(--build-arg BASE_IMAGE=flbackdoor-base:bookworm)
fi
# The engine's own (legacy) builder: BuildKit needs the buildx plugin, which is not installed here.
log=$(mktemp /tmp/flbackdoor-docker-build.XXXXXX.log)
if ! DOCKER_BUILDKIT=0 docker build "${args[@]}" -t "$TAG" . >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "docker-build: failed; the whole log: $log" >&2
    exit 1
fi
rm -f "$log"
echo "docker-build: $TAG $(docker image inspect -f '{{.Id}} {{.Size}}' "$TAG")"
