"""Generate the blocking client (client/sync.py) from the async one (client/aio.py).

One source for both surfaces, the way httpcore keeps its twins: the async
source is rewritten token by token as `unasync` does it (`async` and `await`
dropped, async names swapped for their blocking twins) and a few docstring
phrases are reworded. Only the standard library is used, so the package build
runs it (hatch_build.py: every install, editable or not, writes sync.py, which
git ignores); uv rebuilds the package when aio.py or this script changes
(`cache-keys` in pyproject.toml).

    make sync-client                                          # write client/sync.py now
    .venv/bin/python scripts/generate_sync_client.py --check  # exit 1 when it is stale

tests/client/test_models.py runs the check.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import tokenize
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "src" / "potok_state" / "client"
SOURCE = CLIENT / "aio.py"
TARGET = CLIENT / "sync.py"

# Whole names (tokens) and their blocking twins.
BLOCKING_NAMES = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "asynccontextmanager": "contextmanager",
    "AsyncIterator": "Iterator",
    "AsyncPotokClient": "PotokClient",
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "asyncio": "time",
}
DROPPED = {"async", "await"}
HEADER = '''"""`PotokClient`: the service's API as typed blocking methods (docs/client.md).

Generated from client/aio.py by scripts/generate_sync_client.py when the package
is installed (or by `make sync-client`): edit aio.py, never this file.
"""'''
# Prose the token rewrite leaves alone; each must occur exactly once.
REWORDED = (
    ("An async client for one", "A blocking client for one"),
    ("as an async context manager, or call `aclose()`", "as a context manager, or call `close()`"),
)


def generate(source: str) -> str:
    """The blocking client's source for the async client's `source`."""
    text = _rewrite_tokens(source)
    docstring_end = text.index('"""', 3) + 3
    text = HEADER + text[docstring_end:]
    for phrase, reworded in REWORDED:
        if text.count(phrase) != 1:
            raise ValueError(f"{phrase!r} is not in client/aio.py exactly once")
        text = text.replace(phrase, reworded)
    return text


def _rewrite_tokens(source: str) -> str:
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))

    def offset(position: tuple[int, int]) -> int:
        row, column = position
        return line_starts[row - 1] + column

    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[tuple[int, int, str]] = []
    for token, following in itertools.pairwise(tokens):
        if token.type != tokenize.NAME:
            continue
        if token.string in DROPPED:
            # With the space after it: `await self._send(call)` -> `self._send(call)`.
            edits.append((offset(token.start), offset(following.start), ""))
        elif token.string in BLOCKING_NAMES:
            edits.append((offset(token.start), offset(token.end), BLOCKING_NAMES[token.string]))
    for start, end, replacement in reversed(edits):
        source = source[:start] + replacement + source[end:]
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate client/sync.py from client/aio.py.")
    parser.add_argument("--check", action="store_true", help="exit 1 if sync.py is stale")
    args = parser.parse_args()
    generated = generate(SOURCE.read_text(encoding="utf-8"))
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
        if current != generated:
            print(f"{TARGET} is not generated from {SOURCE.name}: run `make sync-client`")
            return 1
        return 0
    TARGET.write_text(generated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
