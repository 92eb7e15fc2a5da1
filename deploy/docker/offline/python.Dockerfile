# Stand-in for python:3.11-slim-bookworm, built from the debootstrapped base (images.sh): Debian's
# Python 3.11 with venv, `python` on PATH. The project's Dockerfile takes it as PYTHON_IMAGE.
#
# build-host-ca.crt is the CA bundle of the machine that runs `make images` (images.sh copies it):
# where package registries are reached through a TLS-inspecting proxy, pip in the build must trust
# the same CAs as the host. pip, urllib and requests use it through the variables below.
ARG BASE=reftrain-offline/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python-is-python3 ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY build-host-ca.crt /etc/ssl/certs/build-host-ca.crt
ENV PIP_CERT=/etc/ssl/certs/build-host-ca.crt \
    SSL_CERT_FILE=/etc/ssl/certs/build-host-ca.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/build-host-ca.crt
CMD ["python3"]
