"""Typed user code that must type-check clean under pyright strict."""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from perdure import Engine, RetryPolicy, Run, RunContext, RunHandle, RunPage, Task

engine = Engine("memory://")


class ResizeRequest(BaseModel):
    url: str
    width: int


class ResizeResult(BaseModel):
    url: str
    bytes: int


@engine.task(id="resize", timeout=30, retry=RetryPolicy(max_attempts=5), queue="images")
async def resize(ctx: RunContext, req: ResizeRequest) -> ResizeResult:
    return ResizeResult(url=req.url, bytes=req.width * 10)


@engine.task(id="count-words")
def count_words(ctx: RunContext, text: str) -> int:
    return len(text.split())


@engine.task(id="ping")
async def ping(ctx: RunContext) -> str:
    return "pong"


@engine.task(id="tick")
def tick(ctx: RunContext) -> None:
    return None


assert_type(resize, Task[ResizeRequest, ResizeResult])
assert_type(count_words, Task[str, int])
assert_type(ping, Task[None, str])
assert_type(tick, Task[None, None])


async def use() -> None:
    handle = await resize.trigger(
        ResizeRequest(url="https://example.com/a.png", width=200),
        idempotency_key="img-42",
        delay=5,
        priority=10,
        ttl=3600,
        tags=["user:7"],
        concurrency_key="user-7",
    )
    assert_type(handle, RunHandle[ResizeResult])
    result = await handle.result()
    assert_type(result, ResizeResult)
    print(result.bytes + 1)

    words = await count_words.trigger("a b c")
    assert_type(await words.result(timeout=5), int)

    pong = await ping.trigger(None)
    assert_type(await pong.result(), str)

    handles = await resize.batch_trigger([ResizeRequest(url="u", width=1)])
    assert_type(handles, list[RunHandle[ResizeResult]])

    run = await handle.wait()
    assert_type(run, Run)
    assert_type(await handle.get(), Run)
    assert_type(await handle.cancel(), Run)

    page = await engine.list_runs(task_id="resize", status="failed", limit=50)
    assert_type(page, RunPage)
    assert_type(page.next_cursor, str | None)

    any_handle = engine.handle(run.id)
    print(any_handle.id)
    typed = resize.handle(run.id)
    assert_type(typed, RunHandle[ResizeResult])


def use_sync() -> None:
    handle = count_words.trigger_sync("one two")
    assert_type(handle, RunHandle[int])
    assert_type(handle.result_sync(), int)
    assert_type(handle.wait_sync(), Run)
