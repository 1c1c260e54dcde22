"""JSON serialization through pydantic `TypeAdapter`s of the declared types. Never pickle."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Generic, TypeVar, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from perdure.core.errors import InputValidationError, PayloadTooLargeError

T = TypeVar("T")


def describe_type(tp: Any) -> str:
    """`Model`, `list[int]`, `int | None`: how a declared type reads in an error message."""
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__
    # Generic aliases forward `__name__` to their origin (`list[int]` -> "list"): use the repr.
    return repr(tp).replace("typing.", "")


def format_validation_error(
    exc: ValidationError, root: str = "input"
) -> tuple[str, list[dict[str, Any]]]:
    """One line per problem: `input.x: Input should be a valid integer (got 'abc')`."""
    lines: list[str] = []
    details: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in (root, *err["loc"]))
        got = err.get("input")
        got_text = repr(got)
        if len(got_text) > 60:
            got_text = got_text[:57] + "..."
        lines.append(f"{loc}: {err['msg']} (got {got_text})")
        details.append({"field": loc, "message": err["msg"], "type": err["type"]})
    return "; ".join(lines), details


class Codec(Generic[T]):
    """Validates and (de)serializes values of one declared type."""

    __slots__ = ("adapter", "is_any", "type")

    def __init__(self, tp: Any) -> None:
        self.type = tp
        self.is_any = tp is Any
        self.adapter: TypeAdapter[T] = TypeAdapter(tp)

    def validate(self, value: Any, *, task_id: str | None = None, root: str = "input") -> T:
        """Validate a Python value (a model instance, or plain dicts/lists from JSON)."""
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            text, details = format_validation_error(exc, root)
            where = f" for task {task_id!r}" if task_id else ""
            raise InputValidationError(
                f"invalid {root}{where} (expected {describe_type(self.type)}): {text}",
                task_id=task_id,
                errors=details,
            ) from None

    def dump_json(self, value: T) -> str:
        """Serialize to JSON text; raises one of `SerializationErrors` if `value` is not (and
        does not validate into) the declared type."""
        try:
            return self.adapter.dump_json(value, warnings="error").decode()
        except PydanticSerializationError:
            if self.is_any:
                raise
        # Pydantic only warns on a type mismatch and writes the wrong value; instead accept
        # what validates into the declared type (a dict for a model) and reject the rest.
        coerced = self.adapter.validate_python(value)
        return self.adapter.dump_json(coerced, warnings="error").decode()

    def to_jsonable(self, value: T) -> Any:
        """The JSON-compatible Python form (dicts, lists, str…); errors as `dump_json`."""
        try:
            return self.adapter.dump_python(value, mode="json", warnings="error")
        except PydanticSerializationError:
            if self.is_any:
                raise
        coerced = self.adapter.validate_python(value)
        return self.adapter.dump_python(coerced, mode="json", warnings="error")

    def load(self, data: Any) -> T:
        """Rehydrate a JSON-decoded value into the declared type."""
        if self.is_any:
            return data
        return self.adapter.validate_python(data)


@lru_cache(maxsize=1024)
def codec_for(tp: Any) -> Codec[Any]:
    return Codec(tp)


ANY_CODEC: Codec[Any] = Codec(Any)

SerializationErrors = (PydanticSerializationError, TypeError, ValueError)


def check_size(text: str, limit: int, what: str, task_id: str | None = None) -> None:
    size = len(text.encode()) if len(text) * 4 > limit else len(text)
    if size > limit:
        where = f" of task {task_id!r}" if task_id else ""
        raise PayloadTooLargeError(
            f"{what}{where} is {size} bytes serialized; the limit is {limit} bytes "
            "(engine option max_payload_bytes)",
            task_id=task_id,
        )


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def loads(text: str | bytes | None) -> Any:
    return None if text is None else json.loads(text)
