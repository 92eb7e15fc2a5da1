#!/usr/bin/env bash
# `make compose-up` / `make compose-down`: the compose stack on this machine, offline images by default.
#
#   deploy/docker/compose.sh up [N]   engine up, `up -d` with N CPU trainers (default 1), wait until
#                                     every container is healthy (init: exited 0), print `ps`
#   deploy/docker/compose.sh down     `down -v` (containers, network, volumes), then stop the engine
#                                     if engine.sh started it
#   deploy/docker/compose.sh ARGS...  any compose command with the same files and profile
#
# Files: docker-compose.yml + deploy/docker/compose.offline.yml (REFTRAIN_OFFLINE=0: upstream images,
# for a machine with Docker Hub). Grafana's password is required by the file: without
# GRAFANA_ADMIN_PASSWORD a random one is kept in .local/engine/grafana-password (Grafana itself
# does not start offline).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"
log() { printf '[compose] %s\n' "$*" >&2; }

files=(-f docker-compose.yml)
[ "${REFTRAIN_OFFLINE:-1}" = 1 ] && files+=(-f deploy/docker/compose.offline.yml)
if [ -z "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
  mkdir -p .local/engine
  [ -s .local/engine/grafana-password ] || (umask 077; head -c 18 /dev/urandom | base64 >.local/engine/grafana-password)
  GRAFANA_ADMIN_PASSWORD="$(cat .local/engine/grafana-password)"
fi
export GRAFANA_ADMIN_PASSWORD
# PostgreSQL's superuser and the two least-privilege roles (docs/security.md): random, kept here.
for var in POSTGRES_PASSWORD CATALOG_DB_PASSWORD REGISTRY_DB_PASSWORD; do
  if [ -z "${!var:-}" ]; then
    f=".local/engine/$(echo "$var" | tr 'A-Z_' 'a-z-')"
    mkdir -p .local/engine
    [ -s "$f" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$f")
    printf -v "$var" '%s' "$(cat "$f")"
  fi
  export "${var?}"
done
compose() {
  local c; read -r -a c <<<"$("$HERE/engine.sh" compose)"
  "${c[@]}" "${files[@]}" --profile cpu "$@"
}

healthy() {
  local id state all=0
  for id in $(compose ps -q); do
    state="$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.ExitCode}}' "$id")"
    case "$state" in
      *init*" exited "*" 0") ;;   # the one-shot job: exited 0 (its image's own HEALTHCHECK is moot)
      *" running healthy "*) ;;
      *) all=1 ;;
    esac
  done
  return $all
}

case "${1:-}" in
  up)
    "$HERE/engine.sh" up
    t0=$SECONDS
    compose up -d --scale trainer=0 --scale trainer-cpu="${2:-1}"
    for _ in $(seq 1 120); do healthy && break; sleep 5; done
    healthy || { compose ps >&2; log "not every container is healthy after 10 min"; exit 1; }
    log "every container healthy $((SECONDS - t0)) s after 'up -d'"
    compose ps
    ;;
  down)
    compose down -v --remove-orphans
    "$HERE/engine.sh" down
    ;;
  "") sed -n '2,13p' "$0"; exit 2 ;;
  *) compose "$@" ;;
esac
