"""What the tests and the benchmarks share (one definition each): free ports and bounded waits
(`ports`, `waiting`), real processes and their start/stop (`processes`), Redis servers, key
clean-up and a cuttable relay (`redis_servers`), a Redis Cluster and Sentinel deployment
(`redis_topologies`), the emulator as a process (`emulator`),
`vluna-bff serve` / `dev` with a production-shaped configuration and a starter of replicas
(`service`), JWT signing keys (`keys`), an ASGI app called in-process through httpx (`asgi`) and
the data of the SDK's answers (`envelopes`).

Everything binds to and talks to 127.0.0.1 only. Import the module you need:
`from tests.support.ports import free_port` (the repository root is on `sys.path` under pytest,
and for `python -m bench`).
"""
