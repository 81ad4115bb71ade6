"""The caches (docs/architecture.md, "Caches"): revision floors, the near cache
and the two Redis tiers, whose mechanism `tiers.py` describes."""

from potok_state.cache.tiers import (
    ListLookup,
    StateLookup,
    StateWrite,
    TieredCache,
    list_fingerprint,
)

__all__ = [
    "ListLookup",
    "StateLookup",
    "StateWrite",
    "TieredCache",
    "list_fingerprint",
]
