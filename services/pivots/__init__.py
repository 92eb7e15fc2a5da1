"""The pivots service: multi-level Williams swing pivots from completed candles."""
