# Stand-in for apache/kafka: the same Kafka release as the local stack (deploy/local/pom.xml, Maven
# Central), KRaft, configured like the upstream image from KAFKA_* variables (kafka-run.sh), so
# docker-compose.yml's environment is the one server.properties for both images.
ARG BASE=reftrain-offline/jre:21
FROM ${BASE}
COPY kafka-libs/ /opt/kafka/libs/
COPY kafka-run.sh /opt/kafka/kafka-run.sh
# the bin/ tools of the upstream image that the health check and docs/compose.md use
RUN mkdir -p /opt/kafka/bin /opt/kafka/config /var/lib/kafka/data \
 && for tool in kafka-broker-api-versions:BrokerApiVersionsCommand kafka-topics:TopicCommand \
                kafka-consumer-groups:consumer.group.ConsumerGroupCommand; do \
      printf '#!/bin/sh\nexec java -Xmx128m -cp "/opt/kafka/libs/*" org.apache.kafka.tools.%s "$@"\n' \
        "${tool#*:}" >"/opt/kafka/bin/${tool%%:*}.sh"; \
    done \
 && chmod 755 /opt/kafka/bin/*.sh /opt/kafka/kafka-run.sh \
 && useradd --system --uid 1000 --home-dir /opt/kafka appuser \
 && chown -R appuser /var/lib/kafka /opt/kafka/config
USER appuser
EXPOSE 9092
ENTRYPOINT ["/opt/kafka/kafka-run.sh"]
