"""Complete a wait token from a separate process.

Usage: python complete_token.py DATABASE_URL TOKEN_ID OUTPUT_JSON

Prints the recorded token output as JSON (the first completion's, if it was already done).
"""

from __future__ import annotations

import json
import sys

from perdure import Engine


def main(url: str, token_id: str, output_json: str) -> None:
    engine = Engine(url)
    try:
        record = engine.complete_token_sync(token_id, json.loads(output_json))
        print(json.dumps(record.output), flush=True)
    finally:
        engine.close_sync()


if __name__ == "__main__":
    main(*sys.argv[1:4])
