"""Loading the team's ``module:callable`` hooks, at start so that a typo fails the boot."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any


class HookError(Exception):
    pass


def load_hook(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HookError(f"hook {spec!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HookError(f"hook {spec!r}: cannot import {module_name!r} ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HookError(f"hook {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(target):
        raise HookError(f"hook {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


async def call_hook(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result
