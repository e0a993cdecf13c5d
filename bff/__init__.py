"""vluna-bff: signs users in, maps them to Vluna principals, hands out cached platform tokens."""

from bff._version import __version__

__all__ = ["__version__"]
