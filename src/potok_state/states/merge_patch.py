"""RFC 7396 JSON merge patch, as `PATCH /states/{entity}/{id}` applies it to
metadata."""

from __future__ import annotations

from potok_state.changes.model import JsonObject


def merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes a key."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            base = merged[key]
            assert isinstance(base, dict)
            merged[key] = merge_patch(base, value)
        else:
            merged[key] = value
    return merged
