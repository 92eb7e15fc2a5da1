# Java 21 runtime on Debian 13 (trixie) for the Kafka and registry stand-ins (Apicurio 3.3 needs
# Java >= 21; bookworm has 17 only).
ARG BASE=reftrain-offline/debian:trixie
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openjdk-21-jre-headless ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
