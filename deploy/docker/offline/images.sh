#!/usr/bin/env bash
# `make images`: every image of the compose stack built on this machine, without Docker Hub.
#
#   1. debootstrapped Debian bases (base.sh; tarballs cached per user in ~/.cache/reftrain/images, so
#      every clone on the machine finds them)
#   2. reftrain-offline/python:3.11 (bookworm's Python 3.11) and reftrain-offline/jre:21 (trixie)
#   3. stand-ins for the upstream infrastructure images, selected by deploy/docker/compose.offline.yml:
#      kafka (Kafka 4.4.0 from Maven Central, KRaft), apicurio-registry (3.3.3 on Java 21),
#      postgres (Debian's 15), prometheus (Debian's 2.42), kcat (Debian's 1.7.1)
#   4. the project's reftrain:base and reftrain:ml from deploy/docker/Dockerfile with
#      PYTHON_IMAGE=reftrain-offline/python:3.11 and TORCH_VARIANT (default cpu here)
#
# An image that exists is kept (REBUILD=1 rebuilds the stand-ins); the project's images go through
# Docker's layer cache, so only a changed lock rebuilds the dependency layers. Builds use the classic
# builder (DOCKER_BUILDKIT=0): Debian's engine has no buildx, and it is what docker-compose 1.29 uses.
#
# IMAGES=infra builds only steps 1 and 3, IMAGES=app only steps 1, 2 (python) and 4.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
CACHE="${REFTRAIN_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reftrain/images}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
export DOCKER_BUILDKIT=0
log() { printf '[images] %s\n' "$*" >&2; }

have() { [ -z "${REBUILD:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }

# build TAG DOCKERFILE [FILES...]: a context of just the Dockerfile and the named files
build_standin() {
  local tag="$1" dockerfile="$2"; shift 2
  if have "$tag"; then log "$tag present"; return; fi
  local ctx; ctx="$(mktemp -d "$CACHE/ctx.XXXX")"
  cp "$HERE/$dockerfile" "$ctx/Dockerfile"
  local f; for f in "$@"; do cp -a "$f" "$ctx/"; done
  log "building $tag"
  local t0=$SECONDS
  docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "$tag built in $((SECONDS - t0)) s"
}

"$REPO/deploy/docker/engine.sh" up
mkdir -p "$CACHE"
"$HERE/base.sh" bookworm
"$HERE/base.sh" trixie
IMAGES="${IMAGES:-all}"
if [ "$IMAGES" != infra ]; then
  # the host's CA bundle: pip in the build trusts what the host trusts (a TLS-inspecting proxy)
  cp "${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$CACHE/build-host-ca.crt"
  build_standin reftrain-offline/python:3.11 python.Dockerfile "$CACHE/build-host-ca.crt"
fi
if [ "$IMAGES" != app ]; then
build_standin reftrain-offline/jre:21 jre.Dockerfile

# Kafka and Apicurio from Maven Central, as the local stack fetches them (+ kafka-tools for the
# health check's kafka-broker-api-versions.sh, which the server's dependencies do not include)
# (only when one of the two images is missing: a clean clone on a machine with the images skips it)
runtime="$REPO/deploy/local/.runtime"
if ! have reftrain-offline/kafka:4.4.0 || ! have reftrain-offline/apicurio-registry:3.3.3; then
  PYTHON="${PYTHON:-$REPO/.venv/bin/python}" "$REPO/deploy/local/stack.sh" fetch
fi
if ! have reftrain-offline/kafka:4.4.0 && [ ! -f "$CACHE/kafka-tools/kafka-tools-4.4.0.jar" ]; then
  (cd "$CACHE" && mvn -q -B dependency:copy -Dartifact=org.apache.kafka:kafka-tools:4.4.0 \
     -DoutputDirectory="$CACHE/kafka-tools" >&2)
fi
if ! have reftrain-offline/kafka:4.4.0; then
  rm -rf "$CACHE/kafka-libs" && cp -a "$runtime/kafka-libs" "$CACHE/kafka-libs"
  cp "$CACHE/kafka-tools/kafka-tools-4.4.0.jar" "$CACHE/kafka-libs/"
  build_standin reftrain-offline/kafka:4.4.0 kafka.Dockerfile "$CACHE/kafka-libs" "$HERE/kafka-run.sh"
  rm -rf "$CACHE/kafka-libs"
fi
build_standin reftrain-offline/apicurio-registry:3.3.3 registry.Dockerfile "$runtime/apicurio"
build_standin reftrain-offline/postgres:15 postgres.Dockerfile "$HERE/postgres-run.sh"
build_standin reftrain-offline/prometheus:2.42 prometheus.Dockerfile
build_standin reftrain-offline/kcat:1.7.1 kcat.Dockerfile
fi

# The project's images: ml first (the classic builder runs every stage before the target, so
# `base`, the last stage, then comes from the cache).
[ "$IMAGES" = infra ] || for target in ml base; do
  log "building reftrain:$target (PYTHON_IMAGE=reftrain-offline/python:3.11, TORCH_VARIANT=$TORCH_VARIANT)"
  t0=$SECONDS
  docker build -q -f "$REPO/deploy/docker/Dockerfile" --target "$target" \
    --build-arg PYTHON_IMAGE=reftrain-offline/python:3.11 --build-arg TORCH_VARIANT="$TORCH_VARIANT" \
    -t "reftrain:$target" "$REPO" >/dev/null
  log "reftrain:$target built in $((SECONDS - t0)) s"
done
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^reftrain' | sort >&2
