"""The `perdure` command line against a real SQLite file: exit codes, one-line errors, output.

Commands run in process through `main(argv)` (what the console script calls); the worker runs
as a real subprocess (`python -m perdure worker …`) and is stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from perdure import Engine, Parent, RetryPolicy, RunContext, RunStatus, child
from perdure.cli import runs as runs_cli
from perdure.cli.main import app, main
from perdure.engine.config import OPTIONS

APP_SOURCE = textwrap.dedent(
    """
    import asyncio

    from pydantic import BaseModel

    from perdure import Engine, RetryPolicy, RunContext

    engine = Engine()  # PERDURE_DATABASE_URL points at the test's file


    class Greet(BaseModel):
        name: str


    @engine.task(id="greet")
    async def greet(ctx: RunContext, req: Greet) -> dict[str, str]:
        return {"text": f"Hello, {req.name}!"}


    @engine.task(id="boom", retry=RetryPolicy(max_attempts=1))
    async def boom(ctx: RunContext) -> None:
        raise RuntimeError("kaboom")


    @engine.task(id="nap")
    async def nap(ctx: RunContext) -> str:
        await asyncio.sleep(30)
        return "rested"
    """
)


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
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[str]:
    """A module defining an engine with tasks, importable as `<name>:engine` from tmp_path."""
    name = f"cli_app_{os.urandom(4).hex()}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the cwd on sys.path
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def one_line_error(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


def make_runs(url: str) -> dict[str, str]:
    """Runs made by an in-process engine on the same file: completed, failed and queued."""
    engine = Engine(url)

    @engine.task(id="double")
    async def double(ctx: RunContext, n: int) -> int:
        return n * 2

    @engine.task(id="explode", retry=RetryPolicy(max_attempts=1))
    async def explode(ctx: RunContext) -> None:
        raise ValueError("no such file: report.csv")

    async def go() -> dict[str, str]:
        async with engine:
            done = await double.trigger(21)
            failed = await explode.trigger(None)
            await done.wait(timeout=10)
            await failed.wait(timeout=10)
        pending = Engine(url)
        pending_task = pending.task(id="later", queue="elsewhere")(_later)
        waiting = await pending_task.trigger(None)
        await pending.close()
        return {"completed": done.id, "failed": failed.id, "queued": waiting.id}

    return asyncio.run(go())


async def _later(ctx: RunContext) -> None:
    return None


def run_status(url: str, run_id: str) -> RunStatus:
    engine = Engine(url)

    async def go() -> RunStatus:
        try:
            return (await engine.get_run(run_id)).status
        finally:
            await engine.close()

    return asyncio.run(go())


# --- migrate and usage errors ----------------------------------------------------------------


def test_migrate_applies_then_reports_up_to_date(cli: Any, db_url: str) -> None:
    first = cli("migrate")
    assert first.code == 0, first.err
    assert "applied migrations 0001" in first.out
    second = cli("migrate")
    assert second.code == 0
    assert "up to date" in second.out


def test_trigger_unknown_task_is_one_line_error(cli: Any, db_url: str) -> None:
    result = cli("trigger", "no-such-task", "--input", "{}")
    assert result.code == 1
    assert "unknown task 'no-such-task'" in one_line_error(result)


def test_trigger_with_bad_json_is_one_line_usage_error(cli: Any, db_url: str) -> None:
    result = cli("trigger", "greet", "--input", '{"name": ')
    assert result.code == 2
    assert one_line_error(result).startswith("error: --input is not valid JSON:")


def test_trigger_with_input_of_wrong_type_is_rejected_by_the_app(
    cli: Any, app_module: str, db_url: str
) -> None:
    result = cli("trigger", "greet", "--app", f"{app_module}:engine", "--input", '{"nom": 1}')
    assert result.code == 2
    line = one_line_error(result)
    assert "invalid input for task 'greet'" in line
    assert "input.name: Field required" in line
    assert cli("runs", "ls", "--json").out.count('"id"') == 0  # nothing was stored


def test_runs_ls_with_bad_status_lists_the_allowed_ones(cli: Any, db_url: str) -> None:
    result = cli("runs", "ls", "--status", "bogus")
    assert result.code == 2
    assert one_line_error(result).startswith(
        "error: invalid value for 'status': 'bogus'; expected one of: delayed, queued, running"
    )


def test_click_usage_errors_are_one_line(cli: Any, db_url: str) -> None:
    bad_int = cli("runs", "ls", "--limit", "many")
    assert bad_int.code == 2
    assert "'--limit'" in one_line_error(bad_int)
    unknown = cli("runs", "lss")
    assert unknown.code == 2
    assert "No such command 'lss'" in one_line_error(unknown)


def test_unknown_run_id(cli: Any, db_url: str) -> None:
    for command in (["runs", "show", "run_nope"], ["runs", "cancel", "run_nope"]):
        result = cli(*command)
        assert result.code == 1
        assert one_line_error(result) == "error: run 'run_nope' not found"


def test_worker_app_errors(cli: Any, app_module: str) -> None:
    missing = cli("worker", "no_such_module_here:engine")
    assert missing.code == 2
    assert "cannot import module 'no_such_module_here'" in one_line_error(missing)
    no_attr = cli("worker", f"{app_module}:nothing")
    assert no_attr.code == 2
    assert f"module '{app_module}' has no attribute 'nothing'" in one_line_error(no_attr)
    not_engine = cli("worker", f"{app_module}:greet")
    assert "not a perdure Engine" in one_line_error(not_engine)
    bad_flag = cli("worker", f"{app_module}:engine", "--lease", "soon")
    assert bad_flag.code == 2
    assert one_line_error(bad_flag) == (
        "error: invalid value for '--lease': 'soon'; expected a number of seconds"
    )
    bad_combo = cli("worker", f"{app_module}:engine", "--lease", "1", "--heartbeat", "5")
    assert bad_combo.code == 2
    assert "invalid value for 'heartbeat'" in one_line_error(bad_combo)


def test_worker_has_a_flag_for_every_engine_option() -> None:
    command: Any = typer.main.get_command(app)
    worker = command.commands["worker"]
    flags = {opt for param in worker.params for opt in param.opts}
    for spec in OPTIONS:
        if spec.name != "database_url":
            assert "--" + spec.name.replace("_", "-") in flags


# --- runs ls / show / cancel on real runs -----------------------------------------------------


def test_runs_ls_lists_newest_first_with_filters_and_paging(cli: Any, db_url: str) -> None:
    ids = make_runs(db_url)
    listed = cli("runs", "ls")
    assert listed.code == 0, listed.err
    lines = [line for line in listed.out.splitlines() if line.startswith("run_")]
    assert [line.split()[0] for line in lines] == [ids["queued"], ids["failed"], ids["completed"]]
    assert lines[1].split()[1:3] == ["explode", "failed"]
    assert lines[2].split()[1:3] == ["double", "completed"]

    failed = cli("runs", "ls", "--status", "failed", "--json")
    assert [run["id"] for run in json.loads(failed.out)["runs"]] == [ids["failed"]]
    by_task = cli("runs", "ls", "--task", "double", "--json")
    assert [run["output"] for run in json.loads(by_task.out)["runs"]] == [42]
    by_queue = cli("runs", "ls", "--queue", "elsewhere", "--json")
    assert [run["id"] for run in json.loads(by_queue.out)["runs"]] == [ids["queued"]]

    first = json.loads(cli("runs", "ls", "--limit", "2", "--json").out)
    assert len(first["runs"]) == 2
    assert first["next_cursor"]
    rest = json.loads(cli("runs", "ls", "--limit", "2", "--cursor", first["next_cursor"],
                          "--json").out)  # fmt: skip
    assert [run["id"] for run in rest["runs"]] == [ids["completed"]]
    page = cli("runs", "ls", "--limit", "2")
    assert f"--cursor {first['next_cursor']}" in page.out

    none = cli("runs", "ls", "--status", "expired")
    assert none.code == 0
    assert "no runs" in none.out


def test_runs_show_prints_fields_error_and_history(cli: Any, db_url: str) -> None:
    ids = make_runs(db_url)
    shown = cli("runs", "show", ids["failed"])
    assert shown.code == 0, shown.err
    assert ids["failed"] in shown.out
    assert "explode" in shown.out
    assert "failed" in shown.out
    assert "ValueError: no such file: report.csv (retryable)" in shown.out
    assert "Traceback (most recent call last)" in shown.out  # the stored traceback
    for event_type in ("created", "attempt_started", "attempt_failed"):
        assert event_type in shown.out

    data = json.loads(cli("runs", "show", ids["completed"], "--json").out)
    assert data["status"] == "completed"
    assert data["output"] == 42
    assert data["input"] == 21
    assert data["events"][0]["type"] == "created"
    assert [e["seq"] for e in data["events"]] == list(range(1, len(data["events"]) + 1))


def test_runs_cancel(cli: Any, db_url: str) -> None:
    ids = make_runs(db_url)
    cancelled = cli("runs", "cancel", ids["queued"])
    assert cancelled.code == 0, cancelled.err
    assert f"cancelled {ids['queued']}" in cancelled.out
    assert run_status(db_url, ids["queued"]) is RunStatus.CANCELLED

    finished = cli("runs", "cancel", ids["completed"])
    assert finished.code == 1
    assert "already finished (completed)" in one_line_error(finished)
    assert run_status(db_url, ids["completed"]) is RunStatus.COMPLETED


def test_runs_replay_starts_a_new_run_with_the_same_input(cli: Any, db_url: str) -> None:
    ids = make_runs(db_url)
    result = cli("runs", "replay", ids["completed"])
    assert result.code == 0, result.err
    new_id = result.out.strip()
    assert new_id.startswith("run_")
    assert new_id != ids["completed"]
    data = json.loads(cli("runs", "show", new_id, "--json").out)
    assert (data["task_id"], data["input"], data["status"]) == ("double", 21, "queued")


def test_trigger_stores_a_run_with_options(cli: Any, app_module: str, db_url: str) -> None:
    result = cli(
        "trigger", "greet", "--app", f"{app_module}:engine", "--input", '{"name": "Ada"}',
        "--delay", "60", "--priority", "5", "--idempotency-key", "k-1", "--queue", "q2",
    )  # fmt: skip
    assert result.code == 0, result.err
    run_id = result.out.strip()
    assert run_id.startswith("run_")
    again = cli("trigger", "greet", "--app", f"{app_module}:engine", "--input",
                '{"name": "Ada"}', "--idempotency-key", "k-1")  # fmt: skip
    assert again.out.strip() == run_id  # the idempotency key returned the first run
    data = json.loads(cli("runs", "show", run_id, "--json").out)
    assert data["status"] == "delayed"
    assert data["input"] == {"name": "Ada"}
    assert (data["priority"], data["queue"], data["idempotency_key"]) == (5, "q2", "k-1")


# --- a real worker process ---------------------------------------------------------------------


def test_worker_process_runs_triggered_work_and_stops_on_sigterm(
    cli: Any, app_module: str, db_url: str, tmp_path: Path
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "perdure", "worker", f"{app_module}:engine",
         "--lease", "3", "--heartbeat", "0.5", "--poll-interval", "0.1",
         "--shutdown-grace", "1", "--concurrency", "4"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PERDURE_DATABASE_URL": db_url},
    )  # fmt: skip
    try:
        done = cli("trigger", "greet", "--app", f"{app_module}:engine", "--input",
                   '{"name": "Ada"}', "--wait")  # fmt: skip
        assert done.code == 0, done.err
        run_id, status, output = done.out.strip().splitlines()
        assert status == "status: completed"
        assert output == 'output: {"text":"Hello, Ada!"}'
        assert json.loads(cli("runs", "show", run_id, "--json").out)["status"] == "completed"

        # The worker registered its tasks: no --app needed now (the catalog knows "boom").
        failed = cli("trigger", "boom", "--wait")
        assert failed.code == 1
        assert failed.out.strip().splitlines()[-1] == "status: failed"
        assert "ended failed: RuntimeError: kaboom" in one_line_error(failed)

        # A run still going at SIGTERM is released back to the queue after the grace period.
        napping = cli("trigger", "nap").out.strip()
        deadline = time.monotonic() + 10
        while run_status(db_url, napping) is not RunStatus.RUNNING:
            assert time.monotonic() < deadline, "the worker never started the run"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "SIGTERM: shutting down" in err
    assert "perdure worker: app" in err
    assert run_status(db_url, napping) is RunStatus.QUEUED


def make_tree(url: str) -> dict[str, str]:
    """A finished tree made by an in-process engine: root → [mid → (leaf x3), leaf]."""
    engine = Engine(url)

    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    @engine.parent_task(id="mid")
    def mid(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, i) for i in range(n)])

    @engine.parent_task(id="root")
    def root(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(mid, n), child(leaf, 99)])

    async def go() -> dict[str, str]:
        async with engine:
            handle = await root.trigger(3)
            await handle.result(timeout=10)
            first, last = await engine.children(handle.id)
            return {"root": handle.id, "mid": first.id, "leaf": last.id}

    return asyncio.run(go())


def test_runs_show_tree_prints_the_run_tree(
    cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = make_tree(db_url)
    shown = cli("runs", "show", ids["root"], "--tree")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert len(lines) == 6
    assert lines[0].split() == [ids["root"], "root", "completed"]
    assert lines[1].split()[-3:] == [ids["mid"], "mid", "completed"]
    for line in lines[2:5]:  # the grandchildren, indented below "mid"
        assert line.split()[-2:] == ["leaf", "completed"]
        assert line.index("run_") > lines[1].index("run_")
    assert lines[5].split()[-3:] == [ids["leaf"], "leaf", "completed"]
    assert lines[5].index("run_") == lines[1].index("run_")

    data = json.loads(cli("runs", "show", ids["root"], "--tree", "--json").out)
    assert (data["task_id"], data["status"], data["more"]) == ("root", "completed", 0)
    assert [c["id"] for c in data["children"]] == [ids["mid"], ids["leaf"]]
    assert [c["task_id"] for c in data["children"][0]["children"]] == ["leaf"] * 3

    monkeypatch.setattr(runs_cli, "TREE_MAX_NODES", 3)  # bounded: the rest is counted
    cut = cli("runs", "show", ids["root"], "--tree")
    assert cut.code == 0, cut.err
    assert [line.split()[-2:] for line in cut.out.splitlines()] == [
        ["root", "completed"],
        ["mid", "completed"],
        ["3", "more"],  # mid's children: "… 3 more"
        ["leaf", "completed"],
    ]

    missing = cli("runs", "show", "run_00000000000000000000000000", "--tree")
    assert missing.code == 1
    assert "not found" in one_line_error(missing)
