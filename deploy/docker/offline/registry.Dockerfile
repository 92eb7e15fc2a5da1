# Stand-in for apicurio/apicurio-registry: the same release as the local stack (Maven Central's
# Quarkus app, deploy/local/pom.xml) on Java 21. APICURIO_* variables configure it as upstream
# (Quarkus maps them to apicurio.* properties); JAVA_OPTS_APPEND as in the upstream image.
ARG BASE=reftrain-offline/jre:21
FROM ${BASE}
COPY apicurio/ /deployments/
RUN useradd --system --uid 185 --home-dir /deployments jboss
USER jboss
WORKDIR /deployments
EXPOSE 8080 9000
ENTRYPOINT ["/bin/sh", "-c", "exec java $JAVA_OPTS_APPEND -Djava.io.tmpdir=/tmp -jar /deployments/quarkus-run.jar"]
