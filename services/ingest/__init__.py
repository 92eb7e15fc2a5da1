"""The ingest service: reads candles (files or Binance's WebSocket), sequences, validates and
aggregates them, writes them to the store and then publishes them on ``candles``.

This package holds the pure domain logic; ``__main__`` only wires it to Kafka and the store.
Modules: sources (CSV/Parquet/zip readers), sequencing (per-series guard), aggregate (1m -> higher
timeframes), indicators (SMA/EMA), binance_ws (kline stream client), pacing (replay speed).
"""
