"""config/bff.yaml documents every setting with its default: parsed here and compared, key by key,
with the defaults of the settings model (bff/settings.py). A setting added to one and not the
other, or a default changed in one and not the other, fails with the key's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from bff.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "config" / "bff.yaml"


def documented() -> dict[str, Any]:
    data = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel], str]]:
    """(dotted key, owning model, field name) for every setting that is not a section."""
    out: list[tuple[str, type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += leaves(annotation, key + ".")
        else:
            out.append((key, model, name))
    return out


LEAVES = leaves(Settings)


def documented_value(key: str) -> Any:
    node: Any = documented()
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"config/bff.yaml does not document {key}"
        node = node[part]
    return node


def section_of(key: str) -> Any:
    """The documented section holding `key`, validated by the model that owns the key."""
    node: Any = documented()
    for part in key.split(".")[:-1]:
        node = node[part]
    return node


@pytest.mark.parametrize(("key", "model", "name"), LEAVES, ids=[k for k, _, _ in LEAVES])
def test_documented_default_is_the_real_default(key: str, model: type[BaseModel], name: str) -> None:
    value = documented_value(key)
    # Validated by the owning model, so a documented `[{method: GET, path: ...}]` compares with
    # the model's own route objects, "1" with 1.0 and so on: the same coercions as a real file.
    parsed = getattr(model.model_validate(section_of(key)), name)
    default = getattr(model(), name)
    assert parsed == default, (
        f"config/bff.yaml documents {key}: {value!r}, but the default in bff/settings.py is {default!r}"
    )


def test_every_documented_key_is_a_setting() -> None:
    """No key in the file that the model does not have (the model forbids unknown keys), and the
    file as a whole is exactly the defaults."""
    assert Settings.model_validate(documented()) == Settings()


def test_the_drift_check_can_fail(tmp_path: Path) -> None:
    """Change one documented default: the comparison above sees it."""
    data = documented()
    data["cache"]["backend"] = "memory"
    parsed = Settings.model_validate(data).cache.backend
    assert parsed != Settings().cache.backend
