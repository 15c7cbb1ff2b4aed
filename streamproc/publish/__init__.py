"""Getting events into their streams: routing, consumer-group creation, dedup, backpressure and coalescing."""
