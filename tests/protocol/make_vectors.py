"""Regenerate tests/protocol/vectors/messages.json (only when a wire change is intended).

.venv/bin/python -m tests.protocol.make_vectors
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol import MESSAGE_TYPES, encode

from .schema_tools import example_record

VECTORS = Path(__file__).parent / "vectors" / "messages.json"


def build() -> dict[str, str]:
    return {kind: encode(example_record(cls)).hex() for kind, cls in sorted(MESSAGE_TYPES.items())}


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(MESSAGE_TYPES)} vectors to {VECTORS}")
