"""``python -m services.ingest``: wiring only (settings, store, Kafka, then runner/pipeline)."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from reftrain import service, settings
from reftrain.errors import ConfigError
from reftrain.store import Store
from reftrain.streams import Serdes
from reftrain.topics import CANDLES
from services.ingest import runner
from services.ingest.kafka_io import KafkaPublisher
from services.ingest.pipeline import Pipeline
from services.ingest.settings import IngestSettings


def body(rt: service.Runtime) -> None:
    cfg = settings.load(IngestSettings, "INGEST_")
    if not cfg.files and not cfg.ws_url:
        raise ConfigError("set INGEST_FILES (replay) or INGEST_WS_URL (live)")
    if cfg.layout not in ("auto", "simple", "binance"):
        raise ConfigError(f"INGEST_LAYOUT={cfg.layout!r}: use auto, simple or binance")
    runner.check_series(cfg.files, cfg.derive)
    rt.catalogue.ensure(AdminClient({"bootstrap.servers": rt.platform.kafka_bootstrap_servers}))
    serde = Serdes(rt.platform, rt.catalogue).for_topic(CANDLES)
    dlq = rt.catalogue.dlq(CANDLES)
    store = Store.from_settings(rt.platform)
    publisher = KafkaPublisher(rt.platform, serde, dlq)
    pipeline = Pipeline(store, publisher, derive=cfg.derive, sma=cfg.sma, ema=cfg.ema, batch=cfg.batch,
                        compact_every=cfg.compact_every)
    try:
        runner.start(pipeline, rt.platform, serde, dlq)
        if cfg.ws_url:
            runner.run_live(pipeline, cfg.ws_url, stop=rt.stop, health=rt.health)
        else:
            done = runner.replay_files(
                pipeline, cfg.files, stop=rt.stop, health=rt.health, layout=cfg.layout,  # type: ignore[arg-type]
                speed=cfg.speed, max_sleep_s=cfg.max_sleep or None, progress=runner.progress_enabled(cfg.progress))
            if done and cfg.compact_every:
                pipeline.compact()
            while done and not cfg.exit_when_done and not rt.stop.wait(1.0):
                rt.health.beat()
    finally:
        publisher.close()
        store.close()


if __name__ == "__main__":
    service.main("ingest", body, default_port=8001)
