"""Typed user code with mistakes pyright must catch: one error on each `# expect-error` line
and none elsewhere. A rule name in brackets (`# expect-error[reportArgumentType]`) also pins
which diagnostic it must be."""

from __future__ import annotations

from pydantic import BaseModel

from perdure import Engine, RunContext

engine = Engine("memory://")


class ResizeRequest(BaseModel):
    url: str
    width: int


class ResizeResult(BaseModel):
    url: str
    bytes: int


class Other(BaseModel):
    name: str


@engine.task(id="resize")
async def resize(ctx: RunContext, req: ResizeRequest) -> ResizeResult:
    return ResizeResult(url=req.url, bytes=req.width)


@engine.task(id="count-words")
def count_words(ctx: RunContext, text: str) -> int:
    return len(text.split())


@engine.task(id="ping")
async def ping(ctx: RunContext) -> str:
    return "pong"


async def wrong_payloads() -> None:
    await resize.trigger(Other(name="x"))  # expect-error[reportArgumentType]
    await resize.trigger({"url": "u", "width": 1})  # expect-error[reportArgumentType]
    await count_words.trigger(42)  # expect-error[reportArgumentType]
    await ping.trigger("unexpected input")  # expect-error[reportArgumentType]
    await resize.batch_trigger([ResizeRequest(url="u", width=1), Other(name="x")])  # expect-error
    count_words.trigger_sync(b"bytes")  # expect-error[reportArgumentType]


async def wrong_results() -> None:
    handle = await resize.trigger(ResizeRequest(url="u", width=1))
    _as_int: int = await handle.result()  # expect-error[reportAssignmentType]
    _as_str: str = (await count_words.trigger("a b")).result_sync()  # expect-error
    _not_awaited: ResizeResult = handle.result()  # expect-error[reportAssignmentType]
    (await handle.result()).missing_field  # expect-error[reportAttributeAccessIssue]


async def wrong_options() -> None:
    request = ResizeRequest(url="u", width=1)
    await resize.trigger(request, idempotency="k")  # expect-error[reportCallIssue]
    await resize.trigger(request, priority="high")  # expect-error[reportArgumentType]
    await resize.trigger(request, tags=7)  # expect-error[reportArgumentType]
    await resize.batch_trigger([request], idempotency_key="k")  # expect-error[reportCallIssue]
    await resize.trigger()  # expect-error[reportCallIssue]


@engine.task(id="too-many-parameters")  # expect-error[reportCallIssue]
async def too_many(ctx: RunContext, a: int, b: int) -> int:
    return a + b
