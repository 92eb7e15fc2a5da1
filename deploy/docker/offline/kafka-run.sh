#!/bin/sh
# Entry point of the offline Kafka image: like apache/kafka's, every KAFKA_<NAME> variable becomes
# <name> (lower case, _ -> .) in server.properties; CLUSTER_ID formats the KRaft storage once.
set -eu
conf=/opt/kafka/config/server.properties
: > "$conf"
env | sort | while IFS='=' read -r key value; do
  case "$key" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS) continue ;;
    KAFKA_*) printf '%s=%s\n' "$(printf %s "${key#KAFKA_}" | tr 'A-Z_' 'a-z.')" "$value" >>"$conf" ;;
  esac
done
cat >/opt/kafka/config/log4j2.yaml <<'YAML'
Configuration:
  Appenders:
    Console: {name: stdout, target: SYSTEM_OUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: INFO, AppenderRef: [{ref: stdout}]}
YAML
cp="/opt/kafka/libs/*"
opts="${KAFKA_HEAP_OPTS:--Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml"
logdir="$(sed -n 's/^log.dirs=//p' "$conf")"
if [ ! -f "${logdir:-/var/lib/kafka/data}/meta.properties" ]; then
  # shellcheck disable=SC2086
  java $opts -cp "$cp" kafka.tools.StorageTool format -t "${CLUSTER_ID:?CLUSTER_ID is required}" -c "$conf" >/dev/null
fi
# shellcheck disable=SC2086
exec java $opts -cp "$cp" kafka.Kafka "$conf"
