"""`perdure queues` and `perdure dlq` against a real SQLite file: what they print, what they
change (read back through the engine), and one-line errors with exit code 2 for bad values."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from perdure import Engine, RetryPolicy, RunContext, RunStatus
from perdure.cli.main import main
from perdure.engine.queues import QueueInfo


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("PERDURE_DATABASE_URL", url)
    return url


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def usage_error(result: Result) -> str:
    """The one line on stderr of a command that failed with exit code 2."""
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


def queues_of(url: str) -> dict[str, QueueInfo]:
    engine = Engine(url)

    async def go() -> list[QueueInfo]:
        try:
            return await engine.queues()
        finally:
            await engine.close()

    return {info.name: info for info in asyncio.run(go())}


def table_rows(out: str) -> dict[str, list[str]]:
    """A rich table printed by the CLI, as {first column: the other columns}."""
    lines = out.strip().splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


# --- queues ----------------------------------------------------------------------------------


def queue_some_runs(url: str) -> None:
    engine = Engine(url)

    @engine.task(id="newsletter", queue="emails")
    async def newsletter(ctx: RunContext, to: str) -> None:
        return None

    async def go() -> None:
        await newsletter.batch_trigger(["a@example.com", "b@example.com", "c@example.com"])
        await engine.close()

    asyncio.run(go())


def test_queues_set_limit_ls_pause_and_resume(cli: Any, db_url: str) -> None:
    assert "no queues" in cli("queues", "ls").out
    queue_some_runs(db_url)

    changed = cli(
        "queues", "set-limit", "emails", "--concurrency", "5", "--key-concurrency", "1",
        "--rate", "100/60", "--key-rate", "2/1.5", "--max-depth", "1000",
    )  # fmt: skip
    assert changed.code == 0, changed.err
    assert changed.out.strip() == (
        "queue emails: concurrency 5, key concurrency 1, rate 100/60s, key rate 2/1.5s, "
        "max depth 1000"
    )
    limits = queues_of(db_url)["emails"].limits
    assert (limits.concurrency, limits.key_concurrency, limits.max_depth) == (5, 1, 1000)
    assert limits.rate_limit is not None
    assert (limits.rate_limit.limit, limits.rate_limit.per) == (100, 60.0)

    assert cli("queues", "pause", "emails").code == 0
    listed = cli("queues", "ls")
    assert listed.code == 0, listed.err
    header = listed.out.splitlines()[0].split()
    assert header[:4] == ["queue", "waiting", "running", "suspended"]
    assert table_rows(listed.out)["emails"] == [
        "3", "0", "0", "5", "1", "100/60s", "2/1.5s", "1000", "paused",
    ]  # fmt: skip
    assert queues_of(db_url)["emails"].limits.paused

    # 0 removes a limit; the others stay.
    assert cli("queues", "set-limit", "emails", "--rate", "0", "--concurrency", "0").code == 0
    assert cli("queues", "resume", "emails").code == 0
    data = json.loads(cli("queues", "ls", "--json").out)
    assert data == [
        {
            "name": "emails",
            "waiting": 3,
            "running": 0,
            "suspended": 0,
            "concurrency": None,
            "key_concurrency": 1,
            "rate_limit": None,
            "key_rate_limit": {"limit": 2, "per": 1.5},
            "max_depth": 1000,
            "paused": False,
        }
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "-1"], "invalid value for '--concurrency': '-1'; expected a whole"),
        (["--max-depth", "lots"], "invalid value for '--max-depth': 'lots'"),
        (["--key-concurrency", "1.5"], "invalid value for '--key-concurrency': '1.5'"),
        (["--rate", "100"], "invalid value for '--rate': '100'; expected N/SECONDS, e.g. 100/60"),
        (["--rate", "0/60"], "invalid value for '--rate': '0/60'"),
        (["--key-rate", "5/0"], "invalid value for '--key-rate': '5/0'"),
        (["--key-rate", "5/soon"], "invalid value for '--key-rate': '5/soon'"),
        ([], "nothing to change: give at least one of --concurrency"),
    ],
)
def test_queues_set_limit_rejects_bad_values(
    cli: Any, db_url: str, args: list[str], message: str
) -> None:
    line = usage_error(cli("queues", "set-limit", "emails", *args))
    assert line.startswith(f"error: {message}")
    assert "emails" not in queues_of(db_url)  # nothing was stored


# --- dead letters ----------------------------------------------------------------------------


def make_dead_letters(url: str) -> dict[str, str]:
    engine = Engine(url)

    @engine.task(id="charge", queue="billing", retry=RetryPolicy(max_attempts=2, base_delay=0))
    async def charge(ctx: RunContext, order: str) -> None:
        raise RuntimeError(f"card declined for {order}")

    @engine.task(id="render", queue="media", retry=RetryPolicy(max_attempts=1))
    async def render(ctx: RunContext, frame: int) -> None:
        raise ValueError(f"frame {frame} is corrupt")

    @engine.task(id="ship", queue="billing")
    async def ship(ctx: RunContext, order: str) -> str:
        return f"shipped {order}"

    async def go() -> dict[str, str]:
        async with engine:
            handles = {
                "declined": await charge.trigger("order-1"),
                "corrupt": await render.trigger(7),
                "shipped": await ship.trigger("order-2"),
            }
            for handle in handles.values():
                await handle.wait(timeout=10)
        return {name: handle.id for name, handle in handles.items()}

    return asyncio.run(go())


def test_dlq_ls_replay_and_purge(cli: Any, db_url: str) -> None:
    assert "no dead letters" in cli("dlq", "ls").out
    ids = make_dead_letters(db_url)

    listed = cli("dlq", "ls")
    assert listed.code == 0, listed.err
    rows = table_rows(listed.out)
    assert list(rows) == [ids["corrupt"], ids["declined"]]  # newest first; no completed run
    assert rows[ids["declined"]][:3] == ["charge", "billing", "2"]
    assert "RuntimeError: card declined for order-1" in listed.out
    by_queue = json.loads(cli("dlq", "ls", "--queue", "media", "--json").out)
    assert [run["id"] for run in by_queue["runs"]] == [ids["corrupt"]]
    by_task = json.loads(cli("dlq", "ls", "--task", "charge", "--json").out)
    assert [run["id"] for run in by_task["runs"]] == [ids["declined"]]
    assert "more: perdure dlq ls --cursor" in cli("dlq", "ls", "--limit", "1").out

    replayed = cli("dlq", "replay", ids["corrupt"])
    assert replayed.code == 0, replayed.err
    new_id = replayed.out.strip()
    assert new_id.startswith("run_")
    assert new_id != ids["corrupt"]
    data = json.loads(cli("runs", "show", new_id, "--json").out)
    assert (data["task_id"], data["input"], data["queue"], data["status"]) == (
        "render", 7, "media", RunStatus.QUEUED.value,
    )  # fmt: skip

    not_dead = cli("dlq", "replay", ids["shipped"])
    assert not_dead.code == 1
    assert "is completed, not a dead letter" in not_dead.err

    purged = cli("dlq", "purge", ids["corrupt"], ids["shipped"])
    assert purged.code == 0, purged.err
    assert purged.out.strip() == ("purged 1 dead letter; 1 id not found or not failed, left alone")
    assert cli("dlq", "purge", "--task", "render").out.strip() == "purged 0 dead letters"
    assert cli("dlq", "purge", "--queue", "billing").out.strip() == "purged 1 dead letter"

    assert "no dead letters" in cli("dlq", "ls").out
    remaining = {run["id"] for run in json.loads(cli("runs", "ls", "--json").out)["runs"]}
    assert remaining == {ids["shipped"], new_id}
    assert cli("runs", "show", ids["corrupt"]).code == 1  # gone, with its history


def test_dlq_usage_errors(cli: Any, db_url: str) -> None:
    line = usage_error(cli("dlq", "purge", "run_x", "--queue", "billing"))
    assert line == "error: give run ids or --queue/--task filters, not both"
    assert "'limit'" in usage_error(cli("dlq", "ls", "--limit", "0"))
    missing = cli("dlq", "replay", "run_nope")
    assert missing.code == 1
    assert missing.err.strip() == "error: run 'run_nope' not found"
