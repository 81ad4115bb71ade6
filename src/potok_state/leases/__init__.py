"""Leases: states that change by themselves when heartbeats stop (docs/leases.md)."""
