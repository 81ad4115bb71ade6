"""Two-tier Redis cache (docs/architecture.md, "Caches"); the mechanism is described in `tiers.py`."""

from potok_state.cache.tiers import (
    ListLookup,
    StateLookup,
    StateWrite,
    TieredCache,
    TierHealth,
    list_fingerprint,
)

__all__ = [
    "ListLookup",
    "StateLookup",
    "StateWrite",
    "TierHealth",
    "TieredCache",
    "list_fingerprint",
]
