#!/usr/bin/env bash
# A Debian base image without Docker Hub: `debootstrap --variant=minbase SUITE` from Debian's package
# mirror, cached as a tarball and imported with `docker import`. Used by images.sh.
#
#   deploy/docker/offline/base.sh bookworm    -> image reftrain-offline/debian:bookworm
#   deploy/docker/offline/base.sh trixie      -> image reftrain-offline/debian:trixie
#
# The tarball ($REFTRAIN_IMAGE_CACHE, default ~/.cache/reftrain/images, shared by every clone) is kept:
# a later `make images` on this machine (any clone) imports it again in seconds instead of
# bootstrapping (about 25 s and 200 MB per suite).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
CACHE="${REFTRAIN_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reftrain/images}"
SUITE="${1:?suite: bookworm | trixie}"
# the host's own Debian mirror (deb822 or one-line sources), else debootstrap's default
MIRROR="${DEBIAN_MIRROR:-$( (sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources;
  awk '$1 == "deb" {print $2}' /etc/apt/sources.list) 2>/dev/null | head -1 || true)}"
TAG="reftrain-offline/debian:$SUITE"
log() { printf '[base] %s\n' "$*" >&2; }

docker image inspect "$TAG" >/dev/null 2>&1 && { log "$TAG present"; exit 0; }
mkdir -p "$CACHE"
tarball="$CACHE/debian-$SUITE-minbase.tar"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  root="$(mktemp -d "$CACHE/rootfs-$SUITE.XXXX")"
  log "debootstrap --variant=minbase $SUITE ${MIRROR:+(from $MIRROR)}"
  debootstrap --variant=minbase "$SUITE" "$root" ${MIRROR:+"$MIRROR"} >"$CACHE/debootstrap-$SUITE.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap-$SUITE.log" >&2; exit 1; }
  # the same slimming as Debian's official images: no apt lists or caches in the layer
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$root"
fi
log "docker import $tarball -> $TAG"
docker import --change 'CMD ["/bin/bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  "$tarball" "$TAG" >/dev/null
