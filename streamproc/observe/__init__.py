"""Tracing (OpenTelemetry API), Prometheus metrics and logs, reached through small hooks so they cost
nothing when off."""
