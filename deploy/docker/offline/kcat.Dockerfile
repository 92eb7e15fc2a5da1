# Stand-in for edenhill/kcat: Debian's kcat 1.7.1 (keys, headers, JSON envelopes; its librdkafka has
# no Avro deserialiser, so the `-s value=avro` recipe needs the upstream image).
ARG BASE=reftrain-offline/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kcat >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10002 kcat
USER kcat
ENTRYPOINT ["kcat"]
