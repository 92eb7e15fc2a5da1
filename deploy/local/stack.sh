#!/usr/bin/env bash
# The local runtime without Docker: a single-node KRaft Apache Kafka broker, Apicurio Registry
# (Confluent-compatible API) and PostgreSQL (the DuckLake catalog and the registry's storage), all
# on loopback. Everything it starts is recorded by pid and only those processes are stopped.
#
#   deploy/local/stack.sh fetch    download Kafka + Apicurio from Maven Central (idempotent)
#   deploy/local/stack.sh up       start what is not running, wait until ready (idempotent)
#   deploy/local/stack.sh down     stop what this script started (data is kept)
#   deploy/local/stack.sh status   one line per component, exit 1 if any is down
#   deploy/local/stack.sh env      print the environment variables that point at the stack
#   deploy/local/stack.sh reset    down, then delete all data
#   deploy/local/stack.sh init     topics + BACKWARD_TRANSITIVE schemas (the compose init job)
#   deploy/local/stack.sh sasl-up|sasl-down|sasl-env   a separate SASL_SSL/SCRAM broker (docs/security.md)
#   deploy/local/stack.sh cluster-up|cluster-down|cluster-status|cluster-env   a separate 3-node KRaft
#                                   cluster (RF 3, min.insync.replicas 2; docs/scaling.md)
#   deploy/local/stack.sh s3-up|s3-down|s3-env   S3Proxy: the lake on an S3 API (docs/scaling.md)
#   BROKERS=3 / LAKE=s3 with up|down|status|env   the stack with those in place of broker / folder
#   deploy/local/stack.sh deps     install the Debian packages the stack needs (says which first)
#   deploy/local/stack.sh with CMD  run CMD against the stack: start it first if it is down (a failed
#                                   start ends here, exit 3, with its one ERROR line), stop it after
#
# State lives in $REFTRAIN_STACK_DIR (default .local/stack, git-ignored): topics, registered
# schemas and the catalog survive `down && up`. PostgreSQL runs as the unprivileged `postgres` OS
# user when this script runs as root; that user may not be able to reach a clone inside a 0700
# folder (mktemp -d, /root), so for root its data folder lives under /var/lib/reftrain/, named after
# this stack's state folder: two clones never share a catalog.
# Ports: REFTRAIN_PORT_OFFSET shifts every default port (a second clone: REFTRAIN_PORT_OFFSET=100);
# each REFTRAIN_*_PORT sets one. A port already taken by something this stack did not start stops
# `up` at once with one line saying so.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUNTIME="$HERE/.runtime"
STATE="$(realpath -m "${REFTRAIN_STACK_DIR:-$REPO/.local/stack}")"
OFFSET="${REFTRAIN_PORT_OFFSET:-0}"
KAFKA_PORT="${REFTRAIN_KAFKA_PORT:-$((19092 + OFFSET))}"
CONTROLLER_PORT="${REFTRAIN_CONTROLLER_PORT:-$((19093 + OFFSET))}"
REGISTRY_PORT="${REFTRAIN_REGISTRY_PORT:-$((18081 + OFFSET))}"
REGISTRY_MGMT_PORT="${REFTRAIN_REGISTRY_MGMT_PORT:-$((19000 + OFFSET))}"
PG_PORT="${REFTRAIN_PG_PORT:-$((15432 + OFFSET))}"
PG_USER_OS="${REFTRAIN_PG_OS_USER:-postgres}"
if [ "$(id -u)" = 0 ]; then
  # A folder the postgres user can always reach, one per stack state folder (see the header).
  PG_DATA="${REFTRAIN_PG_DATA:-/var/lib/reftrain/pg-$(printf '%s' "$STATE" | sha256sum | head -c 12)}"
else
  PG_DATA="${REFTRAIN_PG_DATA:-$STATE/pg}"
fi
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- prerequisites --------------------------------------------------------------------------
pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  return 1
}

missing_debian_packages() {
  local missing=()
  pg_bin >/dev/null || missing+=(postgresql)
  command -v kcat >/dev/null || missing+=(kcat)
  command -v mvn >/dev/null || missing+=(maven)
  command -v openssl >/dev/null || missing+=(openssl)
  # Tools the test suite uses to check deploy/ without a Docker engine.
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v promtool >/dev/null || missing+=(prometheus)
  echo "${missing[*]}"
}

ensure_debian_packages() {
  local missing; missing="$(missing_debian_packages)"
  if [ -z "$missing" ]; then log "Debian packages: all present"; return; fi
  command -v apt-get >/dev/null || die "missing Debian packages ($missing) and no apt-get to install them"
  # Said before it is done, so nobody is surprised by a package manager run.
  log "will install from Debian's packages with apt-get: $missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install $missing failed"
  log "installed: $missing"
  # Debian's package starts a cluster of its own on 5432; we run ours on $PG_PORT and leave it be.
}

# A port taken by a process this stack did not start (another clone's stack, say) would make this
# stack talk to someone else's broker or catalog: stop at once instead.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_port_free() {
  local name="$1" port="$2"
  if port_busy "$port"; then
    die "port $port ($name) is already in use by another process (another clone's stack?); stop it, or move this stack with REFTRAIN_PORT_OFFSET=100"
  fi
}

java_for_registry() {
  # Apicurio Registry 3.3 is compiled for Java 21 (class file 65); Kafka 4 runs on 17.
  local j v
  for j in "${REGISTRY_JAVA:-}" "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    v=$("$j" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    if [ -n "$v" ] && [ "$v" -ge 21 ]; then echo "$j"; return; fi
  done
  die "Apicurio Registry needs Java 21 or newer; none found (set REGISTRY_JAVA=/path/to/java)"
}

cmd_fetch() {
  if [ -f "$RUNTIME/apicurio/quarkus-run.jar" ] && [ -f "$RUNTIME/kafka-libs/.complete" ]; then return; fi
  log "fetching Apache Kafka and Apicurio Registry from Maven Central (once)"
  rm -rf "$RUNTIME"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" package >&2
  touch "$RUNTIME/kafka-libs/.complete"
}

# --- PostgreSQL -------------------------------------------------------------------------------
# From /: the postgres user may not be allowed into the current folder (a 0700 clone).
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u "$PG_USER_OS" -- "$@"); else "$@"; fi; }

pg_fail() {
  die "PostgreSQL did not start ($1): $(tail -n 3 "$PG_DATA/server.log" 2>/dev/null | tr '\n' ' ')"
}

# Authentication (issue 17): SCRAM passwords for every connection, socket included; no trust. Roles:
#   postgres  the superuser: the stack's own set-up, ops/catalog.py, tests that create and drop their
#             own catalog databases (REFTRAIN_CATALOG_ADMIN_USER / _PASSWORD_FILE in `env`)
#   reftrain  the services: LOGIN only (no superuser, createdb, createrole); owns the catalog
#             database reftrain (DuckLake creates its tables on the first ATTACH, and its inlined-data
#             tables later, so the services need DDL in their own database and nowhere else)
#   registry  Apicurio: owns the database registry only
# CONNECT on reftrain, registry and postgres is revoked from PUBLIC (owners and the superuser keep
# it). Random passwords are made at initdb into $STATE/pg-auth/<role>.password (mode 600, folder
# 700). A cluster made by an older stack.sh with trust auth is converted on its next `up`.
PG_AUTH="$STATE/pg-auth"

pg_secret() {  # a random password per role, made once per stack
  mkdir -p "$PG_AUTH"; chmod 700 "$PG_AUTH"
  local f="$PG_AUTH/$1.password"
  [ -s "$f" ] || (umask 077; openssl rand -hex 18 >"$f")
  cat "$f"
}

# psql as the superuser over loopback; SQL on stdin (passwords never on a command line).
pg_sql() {
  PGPASSWORD="$(pg_secret postgres)" PGCONNECT_TIMEOUT=10 "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "${1:-postgres}" -f - >/dev/null
}

pg_legacy_trust() { grep -Eq '^[^#]*[[:space:]]trust([[:space:]]|$)' "$PG_DATA/pg_hba.conf" 2>/dev/null; }

# Roles, passwords, database owners: idempotent, run at every `up` (a deleted password file gets a
# new password this way: docs/security.md, rotation).
pg_roles() {
  local db
  pg_sql postgres <<SQL
ALTER ROLE postgres PASSWORD '$(pg_secret postgres)';
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reftrain') THEN CREATE ROLE reftrain; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'registry') THEN CREATE ROLE registry; END IF;
END\$\$;
ALTER ROLE reftrain LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$(pg_secret reftrain)';
ALTER ROLE registry LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '$(pg_secret registry)';
SQL
  for db in reftrain registry; do  # each database is owned by the role of the same name
    if PGPASSWORD="$(pg_secret postgres)" "$(pg_bin)/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
         -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
      echo "ALTER DATABASE $db OWNER TO $db;" | pg_sql postgres
    else
      echo "CREATE DATABASE $db OWNER $db;" | pg_sql postgres
    fi
  done
  echo "REVOKE ALL ON DATABASE reftrain, registry, postgres FROM PUBLIC;" | pg_sql postgres
}

# An older stack's tables belong to postgres: hand those of reftrain and registry to their role.
pg_reassign_tables() {
  local db
  for db in reftrain registry; do
    pg_sql "$db" <<SQL
DO \$\$DECLARE r record; BEGIN
  FOR r IN SELECT c.relkind, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND pg_get_userbyid(c.relowner) <> '$db'
             AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('ALTER %s %I.%I OWNER TO %I', CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                   WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.nspname, r.relname, '$db');
  END LOOP;
  FOR r IN SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
           AND nspname NOT LIKE 'pg_%' AND pg_get_userbyid(nspowner) <> '$db'
  LOOP EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, '$db'); END LOOP;
END\$\$;
SQL
  done
}

pg_hba() {  # what initdb --auth-local/--auth-host=scram-sha-256 writes, for converting an old cluster
  cat >"$PG_DATA/pg_hba.conf" <<EOF
# deploy/local/stack.sh: SCRAM passwords for every connection (loopback and socket), no trust
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
EOF
}

pg_up() {
  local bin; bin="$(pg_bin)" || die "PostgreSQL is not installed (run 'make deps')"
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    log "initialising PostgreSQL in $PG_DATA (SCRAM auth; passwords in $PG_AUTH)"
    mkdir -p "$PG_DATA" || die "cannot create $PG_DATA"
    local pwfile; pwfile="$(mktemp)"
    pg_secret postgres >"$pwfile"
    if [ "$(id -u)" = 0 ]; then
      id "$PG_USER_OS" >/dev/null 2>&1 || { rm -f "$pwfile"; die "OS user '$PG_USER_OS' for PostgreSQL does not exist (install postgresql: 'make deps')"; }
      chown -R "$PG_USER_OS" "$PG_DATA" "$pwfile"
    fi
    chmod 700 "$PG_DATA"
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 >"$STATE/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; die "PostgreSQL initdb failed in $PG_DATA: $(tail -n 2 "$STATE/initdb.log" | tr '\n' ' ')"; }
    rm -f "$pwfile"
  elif ! pg_legacy_trust && [ ! -s "$PG_AUTH/postgres.password" ]; then
    die "PostgreSQL in $PG_DATA wants a password but $PG_AUTH/postgres.password is gone: 'stack.sh reset' makes a new catalog"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    check_port_free postgres "$PG_PORT"
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
      -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null 2>&1 \
      || pg_fail "pg_ctl start"
  fi
  pg_roles || die "PostgreSQL role set-up failed (see $PG_DATA/server.log)"
  if pg_legacy_trust; then
    log "converting PostgreSQL from trust to SCRAM auth (roles reftrain, registry; passwords in $PG_AUTH)"
    pg_reassign_tables || die "PostgreSQL: handing the tables to their roles failed"
    pg_hba
    as_pg "$bin/pg_ctl" -D "$PG_DATA" reload >/dev/null || die "PostgreSQL reload failed"
  fi
}

pg_down() {
  local bin; bin="$(pg_bin)" || return 0
  [ -f "$PG_DATA/PG_VERSION" ] || return 0
  if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
  fi
}

pg_status() {
  local bin; bin="$(pg_bin)" || { echo "postgres: not installed"; return 1; }
  if as_pg "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1 && "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "postgres: up 127.0.0.1:$PG_PORT (data $PG_DATA)"
  else echo "postgres: down"; return 1; fi
}

# --- Kafka ------------------------------------------------------------------------------------
# The parts every broker here shares (the single broker, the SASL broker, the cluster nodes):
# kafka_storage_properties <dir> <replication factor> <min isr>: logs, partitions, internal topics.
kafka_storage_properties() {
  local dir="$1" rf="$2" isr="$3"
  cat <<EOF
log.dirs=$dir/data
num.partitions=6
default.replication.factor=$rf
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=67108864
EOF
}

# kafka_standalone_listeners <protocol> <port> <controller port>: a one-node broker+controller on loopback.
kafka_standalone_listeners() {
  local proto="$1" port="$2" cport="$3"
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=$proto://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$proto://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=$proto
listener.security.protocol.map=$proto:$proto,CONTROLLER:PLAINTEXT
EOF
}

# kafka_prepare <dir> <java option>...: the broker's log4j2 file (log in <dir>/server.log) and its JVM
# options in KAFKA_JAVA (the heap and tuning the caller gives, then G1 and the log4j2 file).
kafka_prepare() {
  local dir="$1"; shift
  cat >"$dir/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: file
      fileName: $dir/server.log
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
EOF
  KAFKA_JAVA=("$@" -XX:+UseG1GC -Djava.awt.headless=true "-Dlog4j2.configurationFile=$dir/log4j2.yaml")
}

# kafka_format <dir> <cluster id> [StorageTool option]...: format the KRaft storage (once, by the caller).
kafka_format() {
  local dir="$1" cid="$2"; shift 2
  java "${KAFKA_JAVA[@]}" -cp "$RUNTIME/kafka-libs/*" kafka.tools.StorageTool format -t "$cid" \
    -c "$dir/server.properties" "$@"
}

new_cluster_id() { tr -d '-' </proc/sys/kernel/random/uuid | head -c 22; }

# kafka_start <dir> <pid file>: the broker in the background, its pid in <pid file>.
kafka_start() {
  nohup java "${KAFKA_JAVA[@]}" -cp "$RUNTIME/kafka-libs/*" kafka.Kafka "$1/server.properties" \
    >"$1/stdout.log" 2>&1 &
  echo $! >"$2"
}

kafka_up() {
  local dir="$STATE/kafka" pidf="$STATE/kafka.pid"
  pid_alive "$pidf" && return
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
$(kafka_standalone_listeners PLAINTEXT "$KAFKA_PORT" "$CONTROLLER_PORT")
$(kafka_storage_properties "$dir" 1 1)
EOF
  kafka_prepare "$dir" -Xms256m -Xmx768m
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting KRaft storage"
    kafka_format "$dir" "$(new_cluster_id)" --standalone >/dev/null
  fi
  check_port_free kafka "$KAFKA_PORT"; check_port_free "kafka controller" "$CONTROLLER_PORT"
  log "starting Kafka on 127.0.0.1:$KAFKA_PORT"
  kafka_start "$dir" "$pidf"
}

# --- Apicurio Registry --------------------------------------------------------------------------
registry_up() {
  local dir="$STATE/registry" pidf="$STATE/registry.pid"
  pid_alive "$pidf" && return
  mkdir -p "$dir"
  local java; java="$(java_for_registry)"
  check_port_free registry "$REGISTRY_PORT"; check_port_free "registry management" "$REGISTRY_MGMT_PORT"
  log "starting Apicurio Registry on 127.0.0.1:$REGISTRY_PORT (storage: PostgreSQL)"
  # The password by environment (Quarkus reads APICURIO_DATASOURCE_PASSWORD), never on a command line.
  (cd "$RUNTIME/apicurio" && APICURIO_DATASOURCE_PASSWORD="$(pg_secret registry)" exec nohup "$java" -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=postgresql \
    -Dapicurio.datasource.url="jdbc:postgresql://127.0.0.1:$PG_PORT/registry" \
    -Dapicurio.datasource.username=registry \
    -Dapicurio.rest.deletion.artifact.enabled=true -Dapicurio.rest.deletion.artifact-version.enabled=true \
    -jar quarkus-run.jar >"$dir/stdout.log" 2>&1) &
  echo $! >"$pidf"
}

stop_pid() {
  local name="$1" pidf="$2"
  pid_alive "$pidf" || { rm -f "$pidf"; return 0; }
  local pid; pid="$(cat "$pidf")"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && { log "$name did not stop in 30 s; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$pidf"
}

# BROKERS=3 (or REFTRAIN_BROKERS=3) puts the 3-node cluster (cluster-up) in place of the single broker.
use_cluster() { [ "${REFTRAIN_BROKERS:-${BROKERS:-1}}" -gt 1 ] 2>/dev/null; }

export_env() {
  local bootstrap="127.0.0.1:$KAFKA_PORT"
  if use_cluster; then bootstrap="$(cluster_bootstrap)"; fi
  cat <<EOF
export KAFKA_BOOTSTRAP_SERVERS=$bootstrap
export SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7
export STORE_CATALOG='postgres:dbname=reftrain host=127.0.0.1 port=$PG_PORT user=reftrain'
export STORE_CATALOG_PASSWORD_FILE=$PG_AUTH/reftrain.password
export REFTRAIN_CATALOG_ADMIN_USER=postgres
export REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE=$PG_AUTH/postgres.password
export STORE_DATA_PATH=$STATE/lake
EOF
  if use_s3; then s3_env; fi
}

wait_ready() {
  eval "$(export_env)"
  [ -x "$PYTHON" ] || die "no virtualenv at $PYTHON (run 'make venv' first)"
  "$PYTHON" "$HERE/wait_ready.py" --timeout "${1:-120}" || {
    log "stack not ready; last lines of the logs:"
    tail -n 20 "$STATE/kafka/server.log" "$STATE/registry/stdout.log" 2>/dev/null >&2 || true
    exit 1
  }
}

# --- SASL_SSL broker (optional, separate from `up`) ------------------------------------------------
# `stack.sh sasl-up` starts a Kafka broker whose only client listener is SASL_SSL with SCRAM-SHA-512:
# a CA and a broker certificate (SAN 127.0.0.1, localhost) made with openssl/keytool, SCRAM users
# added at KRaft format time (StorageTool --add-scram), random passwords kept under
# $STATE/sasl (mode 600). It shares nothing with `up`'s broker (own data, pid, ports), so both can
# run. `sasl-env` prints the variables a client needs (KAFKA_CONFIG_FILE points at a librdkafka
# properties file with the service user's credentials and the CA).
SASL_PORT="${REFTRAIN_SASL_KAFKA_PORT:-19094}"
SASL_CONTROLLER_PORT="${REFTRAIN_SASL_CONTROLLER_PORT:-19095}"

sasl_secret() {  # a random password, created once per stack
  local f="$STATE/sasl/$1.password"
  [ -s "$f" ] || (umask 077; openssl rand -hex 18 >"$f")
  cat "$f"
}

sasl_certs() {
  local d="$STATE/sasl"
  mkdir -p "$d"; chmod 700 "$d"
  [ -f "$d/broker.p12" ] && [ -f "$d/truststore.p12" ] && return
  log "creating a CA and a broker certificate in $d"
  local ks; ks="$(sasl_secret keystore)"
  (umask 077
   openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=reftrain-local-ca" \
     -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
   openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/broker.key" -out "$d/broker.csr" 2>/dev/null
   printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$d/broker.ext"
   openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
     -extfile "$d/broker.ext" -out "$d/broker.pem" 2>/dev/null
   openssl pkcs12 -export -in "$d/broker.pem" -inkey "$d/broker.key" -certfile "$d/ca.pem" -name broker \
     -out "$d/broker.p12" -passout "pass:$ks"
   keytool -importcert -noprompt -alias reftrain-ca -file "$d/ca.pem" -keystore "$d/truststore.p12" \
     -storetype PKCS12 -storepass "$ks" >/dev/null 2>&1)
}

sasl_client_properties() {  # librdkafka form, for KAFKA_CONFIG_FILE
  (umask 077; cat >"$STATE/sasl/client.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=reftrain
sasl.password=$(sasl_secret reftrain)
ssl.ca.location=$STATE/sasl/ca.pem
EOF
  )
}

kafka_sasl_up() {
  local dir="$STATE/kafka-sasl" pidf="$STATE/kafka-sasl.pid" d="$STATE/sasl"
  pid_alive "$pidf" && return
  sasl_certs
  sasl_client_properties
  mkdir -p "$dir/data"
  local ks admin; ks="$(sasl_secret keystore)"; admin="$(sasl_secret admin)"
  (umask 077; cat >"$dir/server.properties" <<EOF
$(kafka_standalone_listeners SASL_SSL "$SASL_PORT" "$SASL_CONTROLLER_PORT")
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
ssl.keystore.type=PKCS12
ssl.keystore.location=$d/broker.p12
ssl.keystore.password=$ks
ssl.truststore.type=PKCS12
ssl.truststore.location=$d/truststore.p12
ssl.truststore.password=$ks
ssl.client.auth=none
$(kafka_storage_properties "$dir" 1 1)
EOF
  )
  kafka_prepare "$dir" -Xms256m -Xmx512m
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting KRaft storage with SCRAM-SHA-512 users admin and reftrain"
    kafka_format "$dir" "$(new_cluster_id)" --standalone \
      --add-scram "SCRAM-SHA-512=[name=admin,password=$admin]" \
      --add-scram "SCRAM-SHA-512=[name=reftrain,password=$(sasl_secret reftrain)]" >/dev/null
  fi
  log "starting Kafka (SASL_SSL, SCRAM-SHA-512) on 127.0.0.1:$SASL_PORT"
  kafka_start "$dir" "$pidf"
}

sasl_env() {
  cat <<EOF
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$SASL_PORT
export KAFKA_CONFIG_FILE=$STATE/sasl/client.properties
EOF
}

sasl_wait_ready() {
  [ -x "$PYTHON" ] || die "no virtualenv at $PYTHON (run 'make venv' first)"
  (eval "$(sasl_env)"; cd "$REPO" && "$PYTHON" - "${1:-120}" <<'EOF'
import sys, time
from confluent_kafka.admin import AdminClient
from reftrain import settings
deadline = time.monotonic() + float(sys.argv[1])
admin = AdminClient({**settings.kafka_client_config(settings.platform()), "log_level": 0})
last = None
while True:
    try:
        if admin.list_topics(timeout=5).brokers:
            sys.exit(0)
    except Exception as exc:  # not yet
        last = exc
    if time.monotonic() > deadline:
        print(f"SASL_SSL broker not ready: {last}", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF
  ) || { tail -n 20 "$STATE/kafka-sasl/server.log" >&2 || true; exit 1; }
}


# --- 3-node KRaft cluster (optional, separate from the single broker) ---------------------------
# `stack.sh cluster-up` starts N (REFTRAIN_BROKERS, default 3) combined broker+controller nodes on
# loopback with an N-voter static controller quorum, replication factor 3 and min.insync.replicas 2
# for internal topics and as the broker default. Own data ($STATE/cluster/node-<i>), pids and ports
# (REFTRAIN_CLUSTER_PORT, default 19200+offset: brokers base..base+N-1, controllers base+10..), so
# it can run next to `up`'s broker. `BROKERS=3 stack.sh up` runs the stack with this cluster in
# place of the single broker (PostgreSQL and the registry as usual); `env` then prints all three.
CLUSTER_N="${REFTRAIN_BROKERS:-${BROKERS:-3}}"
[ "$CLUSTER_N" -ge 1 ] 2>/dev/null || CLUSTER_N=3
CLUSTER_PORT="${REFTRAIN_CLUSTER_PORT:-$((19200 + OFFSET))}"

cluster_bootstrap() {
  local i out=""
  for i in $(seq 1 "$CLUSTER_N"); do out="${out:+$out,}127.0.0.1:$((CLUSTER_PORT + i - 1))"; done
  echo "$out"
}

cluster_voters() {
  local i out=""
  for i in $(seq 1 "$CLUSTER_N"); do out="${out:+$out,}$i@127.0.0.1:$((CLUSTER_PORT + 10 + i - 1))"; done
  echo "$out"
}

cluster_node_up() {
  local i="$1" cid="$2" dir="$STATE/cluster/node-$1" pidf="$STATE/cluster/node-$1.pid"
  local port=$((CLUSTER_PORT + i - 1)) cport=$((CLUSTER_PORT + 10 + i - 1))
  local rf=$(( CLUSTER_N >= 3 ? 3 : CLUSTER_N )) isr=$(( CLUSTER_N >= 3 ? 2 : 1 ))
  pid_alive "$pidf" && return
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(cluster_voters)
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
$(kafka_storage_properties "$dir" "$rf" "$isr")
min.insync.replicas=$isr
unclean.leader.election.enable=false
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
EOF
  kafka_prepare "$dir" -Xms128m -Xmx512m -XX:TieredStopAtLevel=1
  if [ ! -f "$dir/data/meta.properties" ]; then
    kafka_format "$dir" "$cid" >"$dir/format.log" 2>&1 \
      || die "KRaft format of node $i failed: $(tail -n 2 "$dir/format.log" | tr '\n' ' ')"
  fi
  check_port_free "kafka node $i" "$port"; check_port_free "kafka controller $i" "$cport"
  log "starting Kafka node $i on 127.0.0.1:$port (controller :$cport)"
  kafka_start "$dir" "$pidf"
}

cluster_up() {
  mkdir -p "$STATE/cluster"
  local cidf="$STATE/cluster/cluster.id"
  [ -s "$cidf" ] || new_cluster_id >"$cidf"
  local i
  for i in $(seq 1 "$CLUSTER_N"); do cluster_node_up "$i" "$(cat "$cidf")"; done
}

cluster_down() {
  # All nodes at once: stopped one by one, the last node's controlled shutdown waits for a
  # controller quorum that is already gone (30 s, then a kill).
  local i pids=()
  for i in $(seq 1 "$CLUSTER_N"); do
    if pid_alive "$STATE/cluster/node-$i.pid"; then pids+=("$(cat "$STATE/cluster/node-$i.pid")"); fi
  done
  if [ "${#pids[@]}" -gt 0 ]; then
    log "stopping kafka nodes (pids ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.5; done
    for i in "${pids[@]}"; do
      kill -0 "$i" 2>/dev/null && { log "kafka pid $i did not stop in 30 s; killing"; kill -KILL "$i" 2>/dev/null || true; }
    done
  fi
  for i in $(seq 1 "$CLUSTER_N"); do rm -f "$STATE/cluster/node-$i.pid"; done
}

cluster_status() {
  local i rc=0
  for i in $(seq 1 "$CLUSTER_N"); do
    if pid_alive "$STATE/cluster/node-$i.pid"; then
      echo "kafka node $i: up 127.0.0.1:$((CLUSTER_PORT + i - 1)) (pid $(cat "$STATE/cluster/node-$i.pid"))"
    else echo "kafka node $i: down"; rc=1; fi
  done
  return $rc
}

cluster_env() { echo "export KAFKA_BOOTSTRAP_SERVERS=$(cluster_bootstrap)"; }

cluster_wait_ready() {  # every node registered and unfenced (metadata lists all N brokers)
  [ -x "$PYTHON" ] || die "no virtualenv at $PYTHON (run 'make venv' first)"
  (eval "$(cluster_env)"; cd "$REPO" && "$PYTHON" - "${1:-120}" "$CLUSTER_N" "$STATE/cluster" <<'EOF'
import os, sys, time
from pathlib import Path
from confluent_kafka.admin import AdminClient
from reftrain import settings
deadline, want, state = time.monotonic() + float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
admin = AdminClient({**settings.kafka_client_config(settings.platform()), "log_level": 0})
seen = 0
while True:
    for i in range(1, want + 1):  # a node that exited (a port taken meanwhile, say) ends the wait at once
        try:
            os.kill(int((state / f"node-{i}.pid").read_text()), 0)
        except (OSError, ValueError):
            log = state / f"node-{i}" / "server.log"
            errors = [ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln] if log.exists() else []
            print(f"kafka node {i} exited: {errors[-1] if errors else 'see ' + str(log)}", file=sys.stderr)
            sys.exit(1)
    try:
        seen = len(admin.list_topics(timeout=5).brokers)
        if seen >= want:
            sys.exit(0)
    except Exception:  # not yet
        pass
    if time.monotonic() > deadline:
        print(f"cluster not ready: {seen}/{want} brokers", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF
  ) || { tail -n 5 "$STATE"/cluster/node-*/server.log >&2 || true; exit 1; }
}


# --- S3 API for the lake (optional): S3Proxy on a local folder --------------------------------
# `stack.sh s3-up` starts S3Proxy (org.gaul:s3proxy from Maven Central, Apache-2.0) with its
# filesystem backend under $STATE/s3, SigV4 auth with a random secret kept in $STATE/s3-auth (mode
# 600), a bucket `reftrain`; `s3-env` prints the STORE_S3_* variables and STORE_DATA_PATH=s3://...
# `LAKE=s3 stack.sh up` starts it with the stack and `env` then points the lake at it.
S3_PORT="${REFTRAIN_S3_PORT:-$((19300 + OFFSET))}"
S3_BUCKET="${REFTRAIN_S3_BUCKET:-reftrain}"

use_s3() { [ "${REFTRAIN_LAKE:-${LAKE:-}}" = s3 ]; }

s3_fetch() {
  [ -s "$RUNTIME/s3proxy/s3proxy.jar" ] && return
  log "fetching S3Proxy from Maven Central (once)"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy@s3proxy >&2
}

s3_secret() {
  local d="$STATE/s3-auth"
  mkdir -p "$d"; chmod 700 "$d"
  [ -s "$d/secret" ] || (umask 077; openssl rand -hex 20 >"$d/secret")
  cat "$d/secret"
}

s3_up() {
  local pidf="$STATE/s3proxy.pid" conf="$STATE/s3-auth/s3proxy.conf"
  pid_alive "$pidf" && return
  s3_fetch
  mkdir -p "$STATE/s3/$S3_BUCKET"  # the filesystem backend: a bucket is a folder
  local secret; secret="$(s3_secret)"
  (umask 077; cat >"$conf" <<EOF
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=reftrain
s3proxy.credential=$secret
jclouds.provider=filesystem
jclouds.filesystem.basedir=$STATE/s3
EOF
  )
  check_port_free s3proxy "$S3_PORT"
  log "starting S3Proxy on 127.0.0.1:$S3_PORT (bucket $S3_BUCKET, files in $STATE/s3)"
  nohup java -Xms64m -Xmx384m -XX:TieredStopAtLevel=1 -jar "$RUNTIME/s3proxy/s3proxy.jar" \
    --properties "$conf" >"$STATE/s3proxy.log" 2>&1 &
  echo $! >"$pidf"
  local _
  for _ in $(seq 1 360); do  # 180 s: a JVM start on a loaded 2-core box took > 60 s
    port_busy "$S3_PORT" && return
    pid_alive "$pidf" || break
    sleep 0.5
  done
  die "S3Proxy did not start: $(tail -n 3 "$STATE/s3proxy.log" 2>/dev/null | tr '\n' ' ')"
}

s3_down() { stop_pid s3proxy "$STATE/s3proxy.pid"; }

s3_env() {  # the secret is printed on purpose: `env` output is what a client evals (never logged)
  cat <<EOF
export STORE_DATA_PATH=s3://$S3_BUCKET/lake
export STORE_S3_ENDPOINT=127.0.0.1:$S3_PORT
export STORE_S3_ACCESS_KEY_ID=reftrain
export STORE_S3_SECRET_ACCESS_KEY=$(s3_secret)
export STORE_S3_REGION=us-east-1
export STORE_S3_URL_STYLE=path
export STORE_S3_USE_SSL=false
EOF
}

# --- cluster init (the compose/k8s init job, for this stack) -----------------------------------
# Topics, BACKWARD_TRANSITIVE compatibility and the schemas of schemas/ for TOPIC_PREFIX (default
# none), plus the DuckLake tables: services never register schemas themselves.
cmd_init() {
  [ -x "$PYTHON" ] || die "no virtualenv at $PYTHON (run 'make venv' first)"
  (eval "$(export_env)"; cd "$REPO" && "$PYTHON" deploy/init/init_cluster.py)
}

case "${1:-}" in
  deps) ensure_debian_packages ;;
  missing-deps) missing_debian_packages ;;
  fetch) cmd_fetch ;;
  up)
    [ -z "$(missing_debian_packages)" ] || ensure_debian_packages
    cmd_fetch
    mkdir -p "$STATE/lake"
    pg_up
    if use_cluster; then cluster_up; else kafka_up; fi
    if use_s3; then s3_up; fi  # the lake, trainer checkpoints and manifests on S3 (docs/scaling.md)
    registry_up
    if use_cluster; then cluster_wait_ready 180; fi
    wait_ready 180
    # As the compose init job: topics, BACKWARD_TRANSITIVE subjects and schemas (services never
    # register schemas themselves). Idempotent.
    cmd_init >"$STATE/init.log" 2>&1 || { tail -n 5 "$STATE/init.log" >&2; die "cluster init failed (see $STATE/init.log)"; }
    log "ready: $(export_env | grep -v SECRET | tr '\n' ' ')"
    ;;
  down)
    stop_pid registry "$STATE/registry.pid"
    stop_pid kafka "$STATE/kafka.pid"
    if use_cluster; then cluster_down; fi
    if use_s3; then s3_down; fi
    pg_down
    ;;
  status)
    rc=0
    pg_status || rc=1
    if use_cluster; then cluster_status || rc=1
    elif pid_alive "$STATE/kafka.pid"; then echo "kafka: up 127.0.0.1:$KAFKA_PORT (pid $(cat "$STATE/kafka.pid"))"; else echo "kafka: down"; rc=1; fi
    if use_s3; then
      if pid_alive "$STATE/s3proxy.pid"; then echo "s3proxy: up 127.0.0.1:$S3_PORT"; else echo "s3proxy: down"; rc=1; fi
    fi
    if pid_alive "$STATE/registry.pid"; then echo "registry: up http://127.0.0.1:$REGISTRY_PORT (pid $(cat "$STATE/registry.pid"))"; else echo "registry: down"; rc=1; fi
    exit $rc
    ;;
  env) export_env ;;
  with)
    shift
    started=0
    if ! "$0" status >/dev/null 2>&1; then
      "$0" up || { "$0" down >/dev/null 2>&1 || true; exit 3; }
      started=1
    fi
    eval "$(export_env)"
    set +e; "$@"; rc=$?; set -e
    if [ "$started" = 1 ] && [ -z "${REFTRAIN_KEEP_STACK:-}" ]; then "$0" down || true; fi
    exit "$rc"
    ;;
  init) cmd_init ;;
  sasl-up) cmd_fetch; mkdir -p "$STATE"; kafka_sasl_up; sasl_wait_ready 180; log "ready: $(sasl_env | tr '\n' ' ')" ;;
  sasl-down) stop_pid kafka-sasl "$STATE/kafka-sasl.pid" ;;
  sasl-env) sasl_env ;;
  cluster-up) cmd_fetch; cluster_up; cluster_wait_ready 180; log "ready: $(cluster_env)" ;;
  cluster-down) cluster_down ;;
  cluster-status) cluster_status ;;
  cluster-env) cluster_env ;;
  s3-up) mkdir -p "$STATE"; s3_up; log "ready: S3Proxy on 127.0.0.1:$S3_PORT, bucket $S3_BUCKET" ;;
  s3-down) s3_down ;;
  s3-env) s3_env ;;
  reset)
    "$0" down
    log "deleting $STATE and $PG_DATA"
    rm -rf "$STATE" "$PG_DATA"
    ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
