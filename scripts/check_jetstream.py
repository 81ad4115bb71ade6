"""Exit 0 when a JetStream-enabled NATS server answers at the URL given (CI)."""

from __future__ import annotations

import asyncio
import sys

import nats


async def check(url: str) -> None:
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        account = await client.jetstream().account_info()
        print(f"JetStream at {url}: {account.streams} streams")
    finally:
        await client.close()


if __name__ == "__main__":
    try:
        asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"))
    except Exception as exc:
        sys.exit(f"{type(exc).__name__}: {exc}")
