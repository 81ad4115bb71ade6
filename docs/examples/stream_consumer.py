"""Read Potok State events from NATS JetStream with a durable pull consumer,
starting after a revision (docs/stream.md, "Consuming").

    NATS_URL=nats://127.0.0.1:4222 python docs/examples/stream_consumer.py \
        --durable billing --after 1200

The first run creates the durable consumer at the first event after revision
`--after` (the stream holds the events in revision order, so a binary search over
it finds that event); later runs resume where the consumer acknowledged last and
ignore `--after`. Delivery is at-least-once: a message that was handled but not
acknowledged comes again, so the handler skips revisions it has seen.

`mypy --strict` checks this file (pyproject.toml), as a user's code would be checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import nats
from nats.errors import TimeoutError as FetchTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

REVISION = "Potok-Revision"


async def first_sequence_after(
    js: JetStreamContext, stream: str, prefix: str, revision: int
) -> int:
    """The stream sequence to start at to see every event after `revision`."""
    info = await js.stream_info(stream)
    low, high = info.state.first_seq, info.state.last_seq + 1
    while low < high:
        middle = (low + high) // 2
        try:  # the first of our messages at or after `middle`
            found = await js.get_msg(stream, seq=middle, subject=f"{prefix}.>", next=True)
        except NotFoundError:
            high = middle
            continue
        if found.seq is None or found.seq >= high:
            high = middle
        elif int((found.headers or {})[REVISION]) <= revision:
            low = found.seq + 1
        else:
            high = middle
    return low


async def subscribe(
    js: JetStreamContext, stream: str, prefix: str, durable: str, after: int
) -> JetStreamContext.PullSubscription:
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:  # first run: start right after `after`
        start = await first_sequence_after(js, stream, prefix, after)
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=f"{prefix}.>",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
    return await js.pull_subscribe_bind(durable, stream=stream)


def handle(subject: str, event: dict[str, Any]) -> None:
    """Your code: here, one line per event."""
    data = event["data"]
    what = f"{data['entity']}/{data['id']} -> {data['newStatus']}" if "entity" in data else data
    print(f"{event['revision']} {subject} {what}", flush=True)


async def consume(
    url: str, stream: str, prefix: str, durable: str, after: int, count: int | None
) -> None:
    client = await nats.connect(url.split(","))
    try:
        js = client.jetstream()
        subscription = await subscribe(js, stream, prefix, durable, after)
        handled, last_revision = 0, after
        while count is None or handled < count:
            try:
                batch = await subscription.fetch(100, timeout=5)
            except FetchTimeout:
                continue  # nothing new yet
            for message in batch:
                revision = int((message.headers or {})[REVISION])
                if revision > last_revision:  # skip a redelivery of one already handled
                    handle(message.subject, json.loads(message.data))
                    last_revision = revision
                    handled += 1
                await message.ack()
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durable", required=True, help="consumer name; it keeps your place")
    parser.add_argument("--after", type=int, default=0, help="first run: start after it")
    parser.add_argument("--count", type=int, help="stop after so many events")
    parser.add_argument("--stream", default=os.environ.get("NATS_STREAM", "POTOK"))
    parser.add_argument("--prefix", default=os.environ.get("NATS_SUBJECT_PREFIX", "potok"))
    args = parser.parse_args()
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    asyncio.run(consume(url, args.stream, args.prefix, args.durable, args.after, args.count))


if __name__ == "__main__":
    main()
