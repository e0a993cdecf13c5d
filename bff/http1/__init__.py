"""The service's HTTP/1.1 client: a pool of keep-alive connections to one origin (``pool``), one
connection each (``connection``), what bounds a call and how it fails (``errors``), and the same
pool behind httpx's transport interface (``httpx_transport``) for the SDK client that issues
tokens. The proxy's upstream (bff/proxy/http1.py) is the pool answering as an ``Upstream``."""
