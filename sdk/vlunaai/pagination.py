"""Cursor pagination: iterate over every item of a list operation, page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .errors import VlunaAIError

MAX_PAGES = 10_000


async def paginate(
    list_call: Callable[..., Awaitable[Any]],
    *args: Any,
    query: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Any]:
    """Yield every item of `list_call` (e.g. `client.list_meters`), following `meta.next_cursor`.

    Stops when the server says `has_more: false` or gives no cursor. A failed page raises
    (`VlunaAIError`) instead of silently ending the iteration.
    """
    page_query: dict[str, Any] = dict(query or {})
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        envelope = await list_call(*args, query=page_query, **kwargs)
        if getattr(envelope, "ok", None) is False:
            raise VlunaAIError(
                getattr(envelope, "message", None) or "List request failed",
                code=getattr(envelope, "code", None),
                status=getattr(envelope, "status", None),
            )
        data = getattr(envelope, "data", None)
        for item in _page_items(data):
            yield item
        meta = getattr(envelope, "meta", None)
        # The cursor is in `meta` for most lists; `{items, next_cursor}` pages carry it in `data`.
        cursor = _meta_value(meta, "next_cursor") or _meta_value(data, "next_cursor")
        has_more = _meta_value(meta, "has_more")
        if has_more is None:
            has_more = _meta_value(data, "has_more")
        if not cursor or has_more is False:
            return
        if cursor in seen:
            raise VlunaAIError(f"Pagination cursor repeated ({cursor!r}); stopping to avoid a loop")
        seen.add(cursor)
        page_query["cursor"] = cursor
    raise VlunaAIError(f"Pagination stopped after {MAX_PAGES} pages")


def _page_items(data: Any) -> list[Any]:
    """The items of one page: `data` is a list, a root model over a list, or `{items: [...]}`."""
    if data is None:
        return []
    if isinstance(data, list):
        return data
    root = getattr(data, "root", None)
    if isinstance(root, list):
        return root
    items = data.get("items") if isinstance(data, Mapping) else getattr(data, "items", None)
    return items if isinstance(items, list) else []


def _meta_value(meta: Any, key: str) -> Any:
    if isinstance(meta, Mapping):
        return meta.get(key)
    return getattr(meta, key, None)
