"""The ingest service: reads candles (files or Binance's WebSocket), sequences, validates and
aggregates them, writes them to the store and then publishes them on ``candles``.

Pure domain logic (no Kafka, no store): sources (CSV/Parquet/zip readers), sequencing (per-series
guard), aggregate (1m -> higher timeframes), indicators (SMA/EMA), binance_ws (kline stream client),
pacing (replay speed). Orchestration: pipeline (write-before-publish, restart repair and resume; it
takes a Store and a publisher), kafka_io (publisher, reading the topic's state back), runner (file
replay, live mode), metrics, settings. ``__main__`` only wires them together. See README.md.
"""
