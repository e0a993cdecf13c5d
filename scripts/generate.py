"""Regenerate every generated file: the pydantic models, the operation table and methods, and
the emulator's sample answers.

Usage: uv run python -m scripts.generate   (from the repository root)
"""

from __future__ import annotations

from scripts.codegen import models, operations, samples


def main() -> None:
    models.main()
    operations.main()
    samples.main()


if __name__ == "__main__":
    main()
