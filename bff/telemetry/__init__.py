"""The instruments any layer may use: the request's context (request id, hashed identity),
spans, and the Prometheus metrics. They import nothing of the service but settings and stats;
``bff.observability`` exposes them (request middleware, probes, /metrics, log format)."""
