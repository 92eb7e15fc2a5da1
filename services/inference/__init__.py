"""The inference service: on each completed candle, predict from the series' last ``window_size``
candles read from the store by reference, and publish an ``InferenceRef`` (never the window)."""
