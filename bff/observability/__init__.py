"""Health and readiness probes, Prometheus metrics, structured logs, tracing, shutdown helpers."""
