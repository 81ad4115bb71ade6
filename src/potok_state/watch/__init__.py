"""Watch streams: the change feed as Server-Sent Events (docs/watch.md)."""
