"""Published import path of the client configuration."""

from vlunaai.config import DEFAULT_USER_AGENT, VlunaAIConfig

__all__ = ["DEFAULT_USER_AGENT", "VlunaAIConfig"]
