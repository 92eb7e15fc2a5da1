#!/bin/sh
# Entry point of the reftrain images: give the process a stable INSTANCE_ID, then run the command.
#
# INSTANCE_ID becomes the Kafka transactional.id suffix (reftrain.settings.PlatformSettings). Compose
# cannot template a per-replica value, so an unset or empty INSTANCE_ID becomes the container's
# hostname: unique per replica under `--scale`, and the same after `docker compose restart`, so a
# restarted instance fences its predecessor's open transaction at once. In Kubernetes the manifests
# set INSTANCE_ID from the pod name.
set -eu
if [ -z "${INSTANCE_ID:-}" ]; then
  INSTANCE_ID="$(hostname)"
fi
export INSTANCE_ID
exec "$@"
