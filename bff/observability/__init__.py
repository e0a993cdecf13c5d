"""How the app exposes its telemetry: the request middleware (ids, access logs, request metrics),
health and readiness probes, the /metrics answer, structured logs, shutdown helpers."""
