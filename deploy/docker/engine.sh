#!/usr/bin/env bash
# A Docker engine for the compose stack on a machine that has none running (like stack.sh does for
# PostgreSQL): install Debian's docker.io when dockerd is missing, start dockerd as root with the
# overlay2 driver when no engine answers, and stop only the dockerd this script started.
#
#   deploy/docker/engine.sh up       an engine answers on the default socket (started here if needed)
#   deploy/docker/engine.sh down     stop dockerd if (and only if) this script started it
#   deploy/docker/engine.sh status   exit 0 when an engine answers
#   deploy/docker/engine.sh compose  print the compose command to use (`docker compose` or docker-compose)
#   deploy/docker/engine.sh with CMD...  run CMD with an engine up; stop the engine afterwards if this
#                                    call started it (what `make compose-test` and `make images` use)
#
# The pid of a dockerd started here is kept in $REFTRAIN_ENGINE_DIR (default .local/engine); an engine
# that was already running (a desktop's, systemd's) is used as it is and never stopped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${REFTRAIN_ENGINE_DIR:-$REPO/.local/engine}"
PIDF="$STATE/dockerd.pid"

log() { printf '[engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

install_engine() {
  command -v dockerd >/dev/null && command -v docker >/dev/null && return
  command -v apt-get >/dev/null || die "no dockerd and no apt-get to install Debian's docker.io"
  [ "$(id -u)" = 0 ] || die "installing and starting dockerd needs root (or start your engine yourself)"
  log "installing Debian's docker.io (engine) and docker-compose"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io docker-compose debootstrap >/dev/null
}

cmd_up() {
  engine_answers && return
  install_engine
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting dockerd needs root"
  mkdir -p "$STATE"
  log "starting dockerd (overlay2; log $STATE/dockerd.log)"
  # setsid: the engine must outlive the make/pytest process group that asked for it
  setsid nohup dockerd --storage-driver=overlay2 >"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDF"
  for _ in $(seq 1 60); do engine_answers && { log "engine ready"; return; }; sleep 1; done
  tail -n 20 "$STATE/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

cmd_down() {
  [ -f "$PIDF" ] || { log "no dockerd started here; nothing to stop"; return; }
  local pid; pid="$(cat "$PIDF")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd did not stop in 30 s; killing"; kill -KILL "$pid" || true; }
  fi
  rm -f "$PIDF"
}

# Compose v2+ (`docker compose`) when the CLI has the plugin, else Debian's docker-compose 1.29.
cmd_compose() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"
  elif command -v docker-compose >/dev/null; then echo "docker-compose"
  else die "no compose: install docker-compose (Debian) or the docker compose plugin"; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) if engine_answers; then echo "engine: up"; else echo "engine: down"; exit 1; fi ;;
  compose) cmd_compose ;;
  with)
    shift
    [ "$#" -gt 0 ] || die "with: no command"
    started=0
    engine_answers || { cmd_up; started=1; }
    set +e; "$@"; rc=$?; set -e
    if [ "$started" = 1 ] && [ "${REFTRAIN_KEEP_ENGINE:-0}" != 1 ]; then
      cmd_down
    elif [ "$started" = 1 ]; then
      log "REFTRAIN_KEEP_ENGINE=1: dockerd left running (stop it with: $0 down)"
    fi
    exit "$rc"
    ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
