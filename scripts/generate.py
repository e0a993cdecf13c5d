"""Regenerate every generated file: the pydantic models, the operation table and methods, and
the emulator's sample answers.

Usage: uv run python scripts/generate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.codegen import models, operations, samples


def main() -> None:
    models.main()
    operations.main()
    samples.main()


if __name__ == "__main__":
    main()
