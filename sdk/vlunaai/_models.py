"""Base model of the generated models, and lenient parsing of server answers."""

from __future__ import annotations

import datetime as _dt
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar, Union, cast, get_args, get_origin
from uuid import UUID

import pydantic
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError, ValidationInfo, model_validator
from typing_extensions import Self

__all__ = ["VlunaModel", "VlunaRootModel", "VlunaSynonymModel", "parse_response"]

M = TypeVar("M", bound=BaseModel)
RootT = TypeVar("RootT")

_NoneType = type(None)
_RESPONSE_CONTEXT_KEY = "vluna_response"
_RESPONSE_CONTEXT = {_RESPONSE_CONTEXT_KEY: True}
_UNION_TYPES: tuple[object, ...] = (Union, types.UnionType)

_config = ConfigDict(extra="allow", populate_by_name=True, regex_engine="python-re")
if tuple(int(x) for x in pydantic.VERSION.split(".")[:2]) >= (2, 11):
    _config["serialize_by_alias"] = True  # type: ignore[typeddict-unknown-key,unused-ignore]


class VlunaModel(BaseModel):
    """Base of every generated model: unknown fields are kept, fields accept name or alias."""

    model_config = _config


class VlunaSynonymModel(VlunaModel):
    """Base of the models whose fields were renamed between the two API generations.

    ``__vluna_synonyms__`` lists pairs of fields that carry the same value under the names of
    the two generations; in an answer, whichever one is set fills the other.
    ``__vluna_require_one_of__`` lists pairs of which at least one must be given.
    """

    __vluna_synonyms__: ClassVar[tuple[tuple[str, str], ...]] = ()
    __vluna_require_one_of__: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="after")
    def _vluna_fill_synonyms(self, info: ValidationInfo) -> Self:
        # Only answers get both names filled: a request keeps exactly the fields the caller
        # gave, so it goes on the wire byte for byte as the published client sends it.
        if isinstance(info.context, Mapping) and info.context.get(_RESPONSE_CONTEXT_KEY):
            _fill_synonyms(self)
        for a, b in type(self).__vluna_require_one_of__:
            if getattr(self, a, None) is None and getattr(self, b, None) is None:
                raise ValueError(f"one of {a!r} or {b!r} is required")
        return self


class VlunaRootModel(RootModel[RootT]):
    """Base of the generated root models (unions, lists, maps).

    Attribute access falls through to ``root``, so ``snapshot.unit_price_xusd`` works where an
    older release had a plain model instead of a union.
    """

    model_config = ConfigDict(regex_engine="python-re")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattr__(name)  # type: ignore[misc]
        try:
            root = self.__dict__["root"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(root, name)


def _fill_synonyms(obj: BaseModel) -> None:
    pairs: tuple[tuple[str, str], ...] = getattr(type(obj), "__vluna_synonyms__", ())
    for a, b in pairs:
        va = getattr(obj, a, None)
        vb = getattr(obj, b, None)
        if va is None and vb is not None:
            setattr(obj, a, vb)
        elif vb is None and va is not None:
            setattr(obj, b, va)


def parse_response(model: type[M], data: object) -> M:
    """Parse a server answer into ``model``; never raises.

    Strict validation first; when the answer does not match the schema (a missing field, a
    new enum value, a changed type), the model is built field by field, keeping whatever
    does not fit as the raw JSON value.
    """
    try:
        return model.model_validate(data, context=_RESPONSE_CONTEXT)
    except (ValidationError, ValueError, TypeError):
        pass
    try:
        return _construct(model, data)
    except Exception:
        return model.model_construct()


# -- lenient construction ----------------------------------------------------------------------


def _construct(model: type[M], data: object) -> M:
    if issubclass(model, RootModel):
        root_field = model.model_fields["root"]
        ok, value = _convert(root_field.annotation, data, lenient=True)
        return cast(M, model.model_construct(value if ok else data))
    source: Mapping[Any, Any] = data if isinstance(data, Mapping) else {}
    values: dict[str, Any] = {}
    fields_set: set[str] = set()
    used: set[str] = set()
    for name, field in model.model_fields.items():
        key = field.alias if field.alias is not None and field.alias in source else name
        if key in source:
            used.add(key)
            fields_set.add(name)
            ok, value = _convert(field.annotation, source[key], lenient=True)
            values[name] = value if ok else source[key]
        elif field.is_required():
            values[name] = None
        else:
            values[name] = field.get_default(call_default_factory=True)
    extra = {k: v for k, v in source.items() if isinstance(k, str) and k not in used and k not in values}
    obj = model.model_construct(_fields_set=fields_set, **values)
    if model.model_config.get("extra") == "allow" and extra:
        if obj.__pydantic_extra__ is None:
            object.__setattr__(obj, "__pydantic_extra__", {})
        assert obj.__pydantic_extra__ is not None
        obj.__pydantic_extra__.update(extra)
    _fill_synonyms(obj)
    return obj


def _convert(tp: Any, value: object, *, lenient: bool) -> tuple[bool, object]:
    """Return (fits, converted). ``lenient`` allows building models that do not validate."""
    if tp is Any or tp is object:
        return True, value
    if tp is None or tp is _NoneType:
        return value is None, value
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Annotated:
        return _convert(args[0], value, lenient=lenient)
    if origin in _UNION_TYPES:
        if value is None:
            return _NoneType in args, None
        members = [a for a in args if a is not _NoneType]
        for member in members:
            ok, converted = _convert(member, value, lenient=False)
            if ok:
                return True, converted
        if lenient:
            for member in members:
                ok, converted = _convert(member, value, lenient=True)
                if ok:
                    return True, converted
        return False, value
    if origin is Literal:
        return value in args, value
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            return False, value
        item_tp = args[0] if args else Any
        items = []
        for item in value:
            ok, converted = _convert(item_tp, item, lenient=lenient)
            if not ok and not lenient:
                return False, value
            items.append(converted if ok else item)
        return True, items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return False, value
        val_tp = args[1] if len(args) == 2 else Any
        out: dict[Any, Any] = {}
        for k, v in value.items():
            ok, converted = _convert(val_tp, v, lenient=lenient)
            if not ok and not lenient:
                return False, value
            out[k] = converted if ok else v
        return True, out
    if isinstance(tp, type):
        return _convert_class(tp, value, lenient=lenient)
    return True, value


def _convert_class(tp: type, value: object, *, lenient: bool) -> tuple[bool, object]:
    if issubclass(tp, BaseModel):
        try:
            return True, tp.model_validate(value, context=_RESPONSE_CONTEXT)
        except ValidationError:
            pass
        if lenient and (isinstance(value, dict) or issubclass(tp, RootModel)):
            return True, _construct(tp, value)
        return False, value
    if issubclass(tp, enum.Enum):
        try:
            return True, tp(value)
        except (ValueError, TypeError):
            return False, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if tp is _dt.datetime:
        return _parse_iso(value, _dt.datetime)
    if tp is _dt.date:
        return _parse_iso(value, _dt.date)
    if tp is UUID:
        if isinstance(value, str):
            try:
                return True, UUID(value)
            except ValueError:
                return False, value
        return False, value
    return isinstance(value, tp), value


def _parse_iso(value: object, tp: type[_dt.date]) -> tuple[bool, object]:
    if not isinstance(value, str):
        return False, value
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        return True, tp.fromisoformat(text)
    except ValueError:
        return False, value
