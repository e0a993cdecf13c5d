"""Well-formed sample values synthesized from JSON Schema.

The long tail of operations (contracts, meters, plans, reports, ...) answers an envelope built
from the response model's own JSON schema: every required field is filled with a value of the
right type and format, optional fields that are objects are filled one level deep so answers
look realistic. Samples are computed once per model and copied per request.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

SAMPLE_TIME = "2026-01-01T00:00:00Z"
_MAX_DEPTH = 8

# Simple patterns seen in the Vluna schemas, with a value each satisfies.
_PATTERN_SAMPLES: dict[str, str] = {
    "^-?[0-9]+$": "0",
    "^(0|[1-9][0-9]*)$": "0",
    "^-?(0|[1-9][0-9]*)$": "0",
    "^[1-9][0-9]*$": "1",
    "^[A-Z]{3}$": "USD",
    "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$": "sample",
}

JsonSchema = dict[str, Any]


class SchemaSampler:
    """Builds one sample instance of a schema that lives in a `$defs` document."""

    def __init__(self, document: JsonSchema) -> None:
        self._defs: dict[str, JsonSchema] = document.get("$defs", {})
        self._root = document

    def sample(self, schema: JsonSchema | None = None, *, field_name: str = "") -> Any:
        return self._value(self._root if schema is None else schema, field_name, 0, required=True)

    def _resolve(self, schema: JsonSchema) -> JsonSchema:
        seen = 0
        while "$ref" in schema and seen < 16:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = {**self._defs.get(name, {}), **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def _value(self, schema: JsonSchema, name: str, depth: int, *, required: bool) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self._resolve(o) for o in schema[key]]
                non_null = [o for o in options if o.get("type") != "null"]
                if not non_null:
                    return None
                if not required and depth >= 2:
                    return None
                return self._value(non_null[0], name, depth, required=required)
        if "allOf" in schema:
            merged: JsonSchema = {}
            for part in schema["allOf"]:
                merged.update(self._resolve(part))
            return self._value(merged, name, depth, required=required)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return {} if schema.get("additionalProperties") else None
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            min_items = int(schema.get("minItems", 0))
            if depth >= _MAX_DEPTH or (min_items == 0 and depth >= 3):
                return []
            item = self._value(schema.get("items", {}), name, depth + 1, required=True)
            return [item] * max(1, min_items)
        if kind == "string":
            return _string(schema, name)
        if kind == "integer":
            if "minimum" in schema:
                return int(schema["minimum"])
            if "exclusiveMinimum" in schema:
                return int(schema["exclusiveMinimum"]) + 1
            return 0
        if kind == "number":
            return float(schema.get("minimum", 0))
        if kind == "boolean":
            return False
        return None

    def _object(self, schema: JsonSchema, depth: int) -> dict[str, Any]:
        props: dict[str, JsonSchema] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        out: dict[str, Any] = {}
        if depth >= _MAX_DEPTH:
            return out
        for key, sub in props.items():
            if key in required:
                out[key] = self._value(sub, key, depth + 1, required=True)
        return out


_EXAMPLE = re.compile(r'Example: "([^"]+)"')


def _string(schema: JsonSchema, name: str) -> str:
    description = str(schema.get("description") or "")
    if "decimal string" in description.lower():
        example = _EXAMPLE.search(description)
        return example.group(1) if example else "0"
    fmt = schema.get("format")
    if fmt == "date-time":
        return SAMPLE_TIME
    if fmt == "date":
        return SAMPLE_TIME[:10]
    if fmt == "uuid":
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vluna-emulator:{name}"))
    if fmt == "uri":
        return "https://example.invalid/"
    pattern = schema.get("pattern")
    value = name or "sample"
    if pattern is not None:
        if pattern in _PATTERN_SAMPLES:
            value = _PATTERN_SAMPLES[pattern]
        elif not re.search(pattern, value):
            value = "sample" if re.search(pattern, "sample") else "1"
    min_len = int(schema.get("minLength", 0))
    max_len = schema.get("maxLength")
    if len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    if max_len is not None and len(value) > int(max_len):
        value = value[: int(max_len)]
    return value


# --- model lookup -----------------------------------------------------------------------------

SchemaProvider = Callable[[str], "JsonSchema | None"]


def generated_model_schema(returns: str) -> JsonSchema | None:
    """JSON schema of a generated SDK model named like `billing.CheckoutEnvelope`."""
    if "." not in returns:
        return None
    module_name, _, class_name = returns.partition(".")
    try:
        module = importlib.import_module(f"vlunaai.generated.{module_name}_models")
    except ImportError:
        return None
    model = getattr(module, class_name, None)
    schema_fn = getattr(model, "model_json_schema", None)
    if schema_fn is None:
        return None
    schema: JsonSchema = schema_fn()
    return schema


def packaged_samples() -> dict[str, Any]:
    """The samples generated from both releases' schemas (scripts/codegen/samples.py): answers
    the published 0.3.2 and 0.1.2 clients both accept."""
    text = resources.files("vlunaai.testing").joinpath("samples.json").read_text("utf-8")
    samples: dict[str, Any] = json.loads(text)["samples"]
    return samples


class EnvelopeSamples:
    """Cached sample envelopes per response model, copied on every use: the packaged samples,
    else one built from the SDK model's schema (`provider`)."""

    def __init__(
        self, provider: SchemaProvider = generated_model_schema, packaged: dict[str, Any] | None = None
    ) -> None:
        self._provider = provider
        self._cache: dict[str, str] = {
            name: json.dumps(value)
            for name, value in (packaged_samples() if packaged is None else packaged).items()
        }

    def data_schema(self, returns: str) -> tuple[SchemaSampler, JsonSchema] | None:
        document = self._schema(returns)
        if document is None:
            return None
        sampler = SchemaSampler(document)
        data = document.get("properties", {}).get("data")
        if data is None:
            return None
        return sampler, data

    @lru_cache(maxsize=512)  # noqa: B019 - one instance per emulator, bounded
    def _schema(self, returns: str) -> JsonSchema | None:
        if returns == "GatePreflightResult":
            returns = "gate.PreflightEnvelope"
        return self._provider(returns)

    def data(self, returns: str) -> Any:
        """A fresh copy of a sample `data` payload for this envelope model (None if unknown)."""
        cached = self._cache.get(returns)
        if cached is None:
            found = self.data_schema(returns)
            value: Any = None
            if found is not None:
                sampler, schema = found
                value = sampler.sample(schema)
            cached = json.dumps(value)
            self._cache[returns] = cached
        return json.loads(cached)
