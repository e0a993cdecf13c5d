"""The generated code is exactly what the generators produce from spec/vluna-api today."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.codegen import models, operations, samples

GENERATED = Path(__file__).resolve().parents[2] / "sdk" / "vlunaai" / "generated"


@pytest.mark.parametrize("generator", [models, operations], ids=["models", "operations"])
def test_generated_files_match_their_generator(generator: object) -> None:
    rendered = generator.render()  # type: ignore[attr-defined]
    assert rendered, "the generator produced nothing"
    stale = [name for name, text in rendered.items() if (GENERATED / name).read_text() != text]
    assert not stale, f"regenerate with `uv run python -m scripts.generate`: {stale} are out of date"


def test_the_emulators_samples_match_their_generator() -> None:
    rendered = samples.render()
    stale = [name for name, text in rendered.items() if (samples.OUT.parent / name).read_text() != text]
    assert not stale, f"regenerate with `uv run python -m scripts.generate`: {stale} are out of date"


def test_the_documented_command_runs_every_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    # `uv run python -m scripts.generate` (README, the generated files' headers): a module of the
    # repository, imported as such (no sys.path edits), that runs the three generators.
    import scripts.generate

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "uv run python -m scripts.generate" in readme
    assert "uv run python -m scripts.generate" in (GENERATED / "operations.py").read_text()
    ran: list[str] = []
    for generator in (models, operations, samples):
        monkeypatch.setattr(generator, "main", lambda name=generator.__name__: ran.append(name))
    scripts.generate.main()
    assert ran == ["scripts.codegen.models", "scripts.codegen.operations", "scripts.codegen.samples"]
