"""Published import path of the base error."""

from vlunaai.errors import VlunaAIError

__all__ = ["VlunaAIError"]
