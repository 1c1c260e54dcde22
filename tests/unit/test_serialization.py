"""Codec: the declared types are the schema; payloads are JSON, validated and rehydrated."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from perdure.core.errors import InputValidationError, PayloadTooLargeError
from perdure.core.serialization import (
    ANY_CODEC,
    Codec,
    SerializationErrors,
    check_size,
    codec_for,
    describe_type,
    dumps,
    loads,
)


class ResizeRequest(BaseModel):
    url: str
    width: int
    tags: list[str] = []


class Point(BaseModel):
    x: int


@dataclasses.dataclass
class Box:
    label: str
    size: tuple[int, int]
    note: str | None = None


class Movie(TypedDict):
    title: str
    year: int


def round_trip(tp: Any, value: Any) -> Any:
    codec: Codec[Any] = Codec(tp)
    text = codec.dump_json(value)
    return codec.load(loads(text))


def test_pydantic_model_round_trip() -> None:
    req = ResizeRequest(url="https://x/img.png", width=640, tags=["a", "b"])
    text = codec_for(ResizeRequest).dump_json(req)
    assert loads(text) == {"url": "https://x/img.png", "width": 640, "tags": ["a", "b"]}
    back = round_trip(ResizeRequest, req)
    assert isinstance(back, ResizeRequest)
    assert back == req


def test_dataclass_round_trip() -> None:
    box = Box(label="crate", size=(2, 3))
    assert loads(codec_for(Box).dump_json(box)) == {"label": "crate", "size": [2, 3], "note": None}
    back = round_trip(Box, box)
    assert isinstance(back, Box)
    assert back == box


def test_typeddict_round_trip() -> None:
    movie: Movie = {"title": "Alien", "year": 1979}
    back = round_trip(Movie, movie)
    assert back == {"title": "Alien", "year": 1979}
    assert type(back) is dict


@pytest.mark.parametrize(
    ("tp", "value", "json_text"),
    [
        (int, 42, "42"),
        (int, -7, "-7"),
        (str, 'héllo "q"', '"héllo \\"q\\""'),
        (float, 2.5, "2.5"),
        (bool, True, "true"),
        (list[int], [1, 2, 3], "[1,2,3]"),
        (list[int], [], "[]"),
        (dict[str, float], {"a": 1.5, "b": -2.0}, '{"a":1.5,"b":-2.0}'),
        (type(None), None, "null"),
        (int | None, None, "null"),
        (int | None, 3, "3"),
        (Any, {"free": [1, "two", None]}, '{"free":[1,"two",null]}'),
    ],
)
def test_primitive_round_trips(tp: Any, value: Any, json_text: str) -> None:
    codec: Codec[Any] = Codec(tp)
    assert codec.dump_json(value) == json_text
    back = codec.load(loads(json_text))
    assert back == value
    assert type(back) is type(value)


def test_datetime_round_trip_keeps_the_instant_and_zone() -> None:
    when = datetime(2024, 2, 29, 13, 45, 7, 123456, tzinfo=UTC)
    codec: Codec[datetime] = Codec(datetime)
    assert codec.dump_json(when) == '"2024-02-29T13:45:07.123456Z"'
    back = codec.load(loads(codec.dump_json(when)))
    assert back == when
    assert back.utcoffset() == timedelta(0)


def test_datetime_with_offset_round_trip() -> None:
    when = datetime(2024, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=2)))
    back = round_trip(datetime, when)
    assert back == when
    assert back.utcoffset() == timedelta(hours=2)


def test_to_jsonable_gives_plain_json_values() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    assert codec_for(datetime).to_jsonable(when) == "2024-01-01T00:00:00Z"
    jsonable = codec_for(Box).to_jsonable(Box("a", (1, 2)))
    assert jsonable == {"label": "a", "size": [1, 2], "note": None}


def test_validate_accepts_an_instance_or_plain_json() -> None:
    codec: Codec[ResizeRequest] = Codec(ResizeRequest)
    req = ResizeRequest(url="u", width=1)
    assert codec.validate(req) == req
    assert codec.validate({"url": "u", "width": "1"}) == req  # lax, like a JSON trigger


def test_validate_rejects_bad_field_naming_field_and_task() -> None:
    codec: Codec[Point] = Codec(Point)
    with pytest.raises(InputValidationError) as info:
        codec.validate({"x": "not-an-int"}, task_id="plot")
    err = info.value
    message = str(err)
    assert "'plot'" in message
    assert "input.x" in message
    assert "'not-an-int'" in message
    assert "expected Point" in message
    assert err.task_id == "plot"
    assert [e["field"] for e in err.errors] == ["input.x"]
    assert err.errors[0]["type"] == "int_parsing"


def test_validate_lists_every_bad_field() -> None:
    with pytest.raises(InputValidationError) as info:
        Codec(ResizeRequest).validate({"width": "wide", "tags": [1]}, task_id="resize")
    fields = sorted(e["field"] for e in info.value.errors)
    assert fields == ["input.tags.0", "input.url", "input.width"]
    for field in fields:
        assert field in str(info.value)


def test_validate_without_task_id_and_custom_root() -> None:
    with pytest.raises(InputValidationError) as info:
        Codec(list[int]).validate(["a"], root="output")
    assert info.value.task_id is None
    assert str(info.value).startswith("invalid output (expected list[int]): output.0:")


def test_validate_truncates_a_long_input_in_the_message() -> None:
    with pytest.raises(InputValidationError) as info:
        Codec(int).validate("z" * 500, task_id="t")
    assert "(got '" + "z" * 56 + "...)" in str(info.value)  # repr cut to 57 characters
    assert "z" * 57 not in str(info.value)


def test_input_validation_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"input\.x"):
        Codec(Point).validate({"x": []})


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (int, "int"),
        (Point, "Point"),
        (list[int], "list[int]"),
        (dict[str, float], "dict[str, float]"),
        (int | None, "int | None"),
        (Any, "Any"),
    ],
)
def test_describe_type(tp: Any, expected: str) -> None:
    assert describe_type(tp) == expected


def test_check_size_at_the_limit_passes() -> None:
    check_size("x" * 100, 100, "input", task_id="t")
    check_size("é" * 50, 100, "input")  # 50 characters, 100 bytes


def test_check_size_above_the_limit_raises() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        check_size("x" * 101, 100, "input", task_id="resize")
    message = str(info.value)
    assert "101 bytes" in message
    assert "the limit is 100 bytes" in message
    assert "'resize'" in message
    assert "max_payload_bytes" in message
    assert info.value.task_id == "resize"
    assert isinstance(info.value, InputValidationError)


def test_check_size_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(PayloadTooLargeError, match="102 bytes"):
        check_size("é" * 51, 100, "output")  # 51 characters, 102 bytes
    with pytest.raises(PayloadTooLargeError, match="8 bytes"):
        check_size("😀😀", 7, "output")  # 2 characters, 8 bytes


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (Any, object()),
        (Any, {"when": lambda: None}),
        (int, object()),
        (int, "abc"),
        (list[int], ["a"]),
        (Point, {"x": "nope"}),
        (Point, 3),
        (dict[str, int], {"a": Decimal("1.5")}),
    ],
)
def test_dump_json_of_an_unserializable_value_raises(tp: Any, value: Any) -> None:
    with pytest.raises(SerializationErrors):
        codec_for(tp).dump_json(value)


def test_dump_json_accepts_what_validates_into_the_declared_type() -> None:
    assert codec_for(Point).dump_json({"x": 1}) == '{"x":1}'
    assert codec_for(list[int]).dump_json((1, 2)) == "[1,2]"
    assert codec_for(float).dump_json(3) == "3.0"


def test_to_jsonable_rejects_a_wrong_type() -> None:
    with pytest.raises(SerializationErrors):
        codec_for(int).to_jsonable("abc")


def test_any_codec_passes_json_through() -> None:
    data = {"a": [1, 2.5, None, "s"]}
    assert ANY_CODEC.load(data) is data
    assert loads(ANY_CODEC.dump_json(data)) == data


def test_codec_for_caches_per_type() -> None:
    assert codec_for(list[int]) is codec_for(list[int])
    assert codec_for(Point).type is Point
    assert codec_for(int) is not codec_for(str)


def test_dumps_and_loads() -> None:
    assert dumps({"a": [1, None], "b": "é"}) == '{"a":[1,null],"b":"\\u00e9"}'
    assert dumps({"t": datetime(2024, 1, 1)}) == '{"t":"2024-01-01 00:00:00"}'
    assert loads('{"a":[1,null]}') == {"a": [1, None]}
    assert loads(b"[1]") == [1]
    assert loads(None) is None
