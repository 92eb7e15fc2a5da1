"""``python -m services.ingest``: wiring only (settings, store, Kafka, then runner/pipeline)."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from reftrain import service, settings
from reftrain.errors import KafkaBoundaryError, StoreError
from reftrain.serde import RegistryUnavailableError
from reftrain.store import Store
from reftrain.streams import Serdes
from reftrain.topics import CANDLES
from services.ingest import runner
from services.ingest import settings as ingest_settings
from services.ingest.kafka_io import KafkaPublisher
from services.ingest.pipeline import Pipeline
from services.ingest.spec import SPEC

#: Outages ingest rides out in-process (back off, resume as after a restart); anything else exits.
OUTAGES = (StoreError, RegistryUnavailableError, KafkaBoundaryError, KafkaException)


def body(rt: service.Runtime) -> None:
    cfg = ingest_settings.load()
    runner.check_series(cfg.files, cfg.derive)
    serde = Serdes(rt.platform, rt.catalogue).for_topic(CANDLES)
    dlq = rt.catalogue.dlq(CANDLES)
    publisher = KafkaPublisher(rt.platform, serde, dlq)

    def session() -> None:
        """One resume-then-run, exactly what a process restart does (write-before-publish and the
        start-up repair make it safe to repeat after any failure)."""
        rt.catalogue.ensure(AdminClient(settings.kafka_client_config(rt.platform)))
        store = Store.from_settings(rt.platform)
        try:
            pipeline = Pipeline(store, publisher, derive=cfg.derive, sma=cfg.sma, ema=cfg.ema, batch=cfg.batch,
                                compact_every=cfg.compact_every)
            runner.start(pipeline, rt.platform, serde, dlq)
            if cfg.ws_url:
                runner.run_live(pipeline, cfg.ws_url, stop=rt.stop, health=rt.health,
                                idle_timeout=cfg.ws_idle_timeout or None)
                return
            done = runner.replay_files(
                pipeline, cfg.files, stop=rt.stop, health=rt.health, layout=cfg.layout,  # type: ignore[arg-type]
                speed=cfg.speed, max_sleep_s=cfg.max_sleep or None, progress=runner.progress_enabled(cfg.progress))
            if done and cfg.compact_every:
                pipeline.compact()
            while done and not cfg.exit_when_done and not rt.stop.wait(1.0):
                rt.health.beat()
        except OUTAGES:
            rt.health.set_ready(False)
            if not publisher.reset(rt.stop, rt.health.beat) and not rt.stop.is_set():
                raise RuntimeError("queued candles neither delivered nor failed; cannot resume safely") from None
            raise
        finally:
            store.close()

    try:
        service.restart_on(OUTAGES, session, service=SPEC.name, stop=rt.stop, health=rt.health)
    finally:
        publisher.close()


if __name__ == "__main__":
    service.main(SPEC, body)
