"""Row ↔ model conversion shared by every backend (JSON columns may arrive as text or decoded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from pydantic_core import from_json

from perdure.core.errors import ErrorInfo
from perdure.core.models import Run, RunEvent, TaskInfo
from perdure.core.statuses import RunStatus
from perdure.storage.database import Row


def _json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return from_json(value)  # pydantic-core's parser: 2-4x the standard library's
        except ValueError:  # what only the standard library reads back (a lone surrogate)
            return json.loads(value)
    return value


def loads_json(value: Any) -> Any:
    """A JSON column's value, whether the driver returned text or decoded JSON."""
    return _json(value)


def _ts(value: Any) -> Any:
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


def row_to_run(row: Row) -> Run:
    error = _json(row["error"])
    tags, metadata = row["tags"], row["metadata"]
    return Run(
        id=row["id"],
        task_id=row["task_id"],
        status=RunStatus(row["status"]),
        attempt=row["attempt"],
        input=_json(row["input"]),
        output=_json(row["output"]),
        error=None if error is None else ErrorInfo.from_json(cast(dict[str, Any], error)),
        queue=row["queue"],
        priority=row["priority"],
        # Most runs have neither: skip the JSON parser for the empty defaults.
        tags=[] if tags == "[]" else _json(tags) or [],
        metadata={} if metadata == "{}" else _json(metadata) or {},
        idempotency_key=row["idempotency_key"],
        parent_id=row["parent_id"],
        root_id=row["root_id"],
        created_at=_ts(row["created_at"]),
        started_at=_ts(row["started_at"]),
        finished_at=_ts(row["finished_at"]),
        updated_at=_ts(row["updated_at"]),
        available_at=_ts(row["available_at"]),
        expires_at=_ts(row["expires_at"]),
        max_attempts=row["max_attempts"],
        lost_leases=row["lost_leases"],
        failures=row.get("failures", 0),
        timeout=row["timeout"],
        version=row["version"],
        concurrency_key=row["concurrency_key"],
        lease_owner=row["lease_owner"],
        lease_expires_at=_ts(row["lease_expires_at"]),
    )


def row_to_event(row: Row) -> RunEvent:
    return RunEvent(
        run_id=row["run_id"],
        seq=row["seq"],
        type=row["type"],
        at=_ts(row["at"]),
        data=_json(row["data"]) or {},
    )


def row_to_task(row: Row) -> TaskInfo:
    return TaskInfo(
        task_id=row["task_id"],
        queue=row["queue"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
        version=row["version"],
        input_schema=_json(row["input_schema"]),
        output_schema=_json(row["output_schema"]),
        updated_at=_ts(row["updated_at"]),
    )


#: One encoder for every write (json.dumps with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> str:
    return _encode(value)
