"""The wire format of notifications sent between storage instances (PostgreSQL NOTIFY
payloads, SQLite wake-up datagrams): one compact JSON text per transaction, tagged with the
sending instance's origin id so an instance can skip its own."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, cast

log = logging.getLogger("perdure.storage")

#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more; datagrams keep to the same size.
MAX_NOTIFY_BYTES = 7900


def encode_notifications(origin: str, notifications: Sequence[tuple[str, str]]) -> str:
    """One compact JSON payload for a transaction's notifications, under `MAX_NOTIFY_BYTES`.

    Too large a batch collapses to its distinct channels with empty payloads ("look again")."""
    payload = _dumps({"o": origin, "n": [list(pair) for pair in notifications]})
    if len(payload.encode()) < MAX_NOTIFY_BYTES:
        return payload
    channels = list(dict.fromkeys(channel for channel, _ in notifications))
    while True:
        payload = _dumps({"o": origin, "n": [[channel, ""] for channel in channels]})
        if len(payload.encode()) < MAX_NOTIFY_BYTES or not channels:
            return payload
        channels.pop()


def decode_notifications(payload: str, own_origin: str) -> list[tuple[str, str]]:
    """Notifications in a payload sent by another instance; [] for our own or a foreign one."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        log.debug("ignoring a malformed notification payload: %.100r", payload)
        return []
    if not isinstance(data, dict):
        return []
    message = cast(dict[str, Any], data)
    pairs: Any = message.get("n")
    if message.get("o") == own_origin or not isinstance(pairs, list):
        return []
    notifications: list[tuple[str, str]] = []
    for pair in cast(list[Any], pairs):
        if isinstance(pair, list) and len(cast(list[Any], pair)) == 2:
            channel, body = cast(list[Any], pair)
            if isinstance(channel, str) and isinstance(body, str):
                notifications.append((channel, body))
    return notifications


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
