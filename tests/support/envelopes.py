"""The SDK's answers in tests: the data of an answer that must have some."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

T_co = TypeVar("T_co", covariant=True)


class HasData(Protocol[T_co]):
    @property
    def data(self) -> T_co | None: ...


def data_of(answer: HasData[T_co]) -> T_co:
    """``answer.data``, failing the test where there is none (an error answer)."""
    data = answer.data
    assert data is not None, f"no data in {answer!r}"
    return data


def extra(answer: BaseModel, name: str) -> Any:
    """A field the SDK keeps beside the declared ones (an error answer's ``status``, say)."""
    kept = answer.model_extra or {}
    assert name in kept, f"no {name!r} in {answer!r}"
    return kept[name]
