"""The event stream: every outbox event published to NATS JetStream (docs/stream.md)."""
