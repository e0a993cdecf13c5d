"""Platform tokens: cache keys, encryption at rest, cache backends, locks and the broker."""
