"""SQLite wake-ups between instances on one database file (`perdure.storage.wake`): what
another instance hears, dead peers, full buffers, and the quiet fallback to polling.

Two Storage instances in one process stand in for two processes: each binds its own socket,
and only the socket path tells them apart, exactly as between processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from perdure.storage import CHANNEL_CANCEL, CHANNEL_FINISHED, CHANNEL_WORK, Storage
from perdure.storage import wake as wake_module
from perdure.storage.notifications import decode_notifications
from perdure.storage.sqlite import SQLiteDatabase
from perdure.storage.wake import SocketWake
from tests.storage.factories import T0, claim_one, completed, create_one, open_storage
from tests.storage.test_events import Heard

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX"), reason="SQLite wake-ups need Unix domain sockets"
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'perdure.db'}"


def wake_of(storage: Storage) -> SocketWake:
    assert isinstance(storage.db, SQLiteDatabase)
    wake = storage.db.wake
    assert wake is not None
    return wake


def directory_of(storage: Storage) -> str:
    directory = wake_of(storage).directory
    assert directory is not None
    return directory


def sockets_in(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".sock"))


@contextlib.contextmanager
def raw_peer(directory: str, name: str = "999999-0000beef.sock") -> Iterator[socket.socket]:
    """A socket bound in the wake-up directory that the test reads by hand."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(os.path.join(directory, name))
    try:
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


def received(sock: socket.socket) -> list[list[tuple[str, str]]]:
    """Every datagram waiting on `sock`, decoded."""
    found: list[list[tuple[str, str]]] = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return found
        found.append(decode_notifications(data.decode(), own_origin="the test"))


def datagram_queue_length() -> int:
    """How many datagrams a Unix socket queues before senders get EAGAIN (Linux)."""
    setting = Path("/proc/sys/net/unix/max_dgram_qlen")
    return int(setting.read_text()) if setting.exists() else 1000


async def test_another_instance_hears_work_finished_and_cancel(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        await create_one(here)
        await remote.wait_for(CHANNEL_WORK)
        run = await claim_one(here)
        await here.finish_attempts("w1", [completed(run)], T0 + 1)
        await remote.wait_for(CHANNEL_FINISHED, run.id)
        doomed = await create_one(here)
        await here.cancel_run(doomed.id, T0 + 2)
        await remote.wait_for(CHANNEL_FINISHED, doomed.id)

        # The probe is sent after everything else; once `here` hears it, it would already
        # have heard its own notifications twice had it not skipped its own socket.
        async with there.db.transaction() as tx:
            tx.notify("probe", "done")
        await local.wait_for("probe")
        expected = [
            (CHANNEL_WORK, ""),
            (CHANNEL_FINISHED, run.id),
            (CHANNEL_WORK, ""),
            (CHANNEL_CANCEL, doomed.id),
            (CHANNEL_FINISHED, doomed.id),
            ("probe", "done"),
        ]
        assert local.items == expected
        assert remote.items == expected


async def test_the_socket_directory_is_private_and_closing_removes_the_socket(
    db_url: str, tmp_path: Path
) -> None:
    async with open_storage(db_url) as here:
        here.add_listener(Heard())
        directory = directory_of(here)
        assert directory == str(tmp_path / "perdure.db-wake")
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert len(sockets_in(directory)) == 1
    assert sockets_in(directory) == []


async def test_an_instance_without_listeners_binds_no_socket_but_still_sends(db_url: str) -> None:
    async with open_storage(db_url) as sender, open_storage(db_url) as there:
        remote = Heard()
        there.add_listener(remote)

        await create_one(sender)

        await remote.wait_for(CHANNEL_WORK)
        assert not wake_of(sender).listening
        assert len(sockets_in(directory_of(there))) == 1


async def test_an_instance_that_starts_listening_between_two_commits_hears_the_second(
    db_url: str,
) -> None:
    async with open_storage(db_url) as here, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_storage(db_url))
        first.add_listener(Heard())
        directory = directory_of(first)
        for i in range(5):
            async with here.db.transaction() as tx:
                tx.notify("before", str(i))
            listed = os.stat(directory)
            newcomer = await stack.enter_async_context(open_storage(db_url))
            heard = Heard()
            newcomer.add_listener(heard)
            # As a kernel with a coarse timestamp clock (or a filesystem keeping whole
            # seconds) would stamp it: the bind leaves the directory's mtime unchanged.
            os.utime(directory, ns=(listed.st_atime_ns, listed.st_mtime_ns))
            async with here.db.transaction() as tx:
                tx.notify("after", str(i))
            await heard.wait_for("after", str(i))


async def test_one_datagram_per_transaction_carries_every_notification(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        there.add_listener(Heard())
        with raw_peer(directory_of(there)) as peer:
            async with here.db.transaction() as tx:
                tx.notify(CHANNEL_FINISHED, "run_a")
                tx.notify(CHANNEL_FINISHED, "run_b")
                tx.notify(CHANNEL_WORK)

            assert received(peer) == [
                [(CHANNEL_FINISHED, "run_a"), (CHANNEL_FINISHED, "run_b"), (CHANNEL_WORK, "")]
            ]


async def test_a_rolled_back_transaction_notifies_nobody(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        async def abort() -> None:
            async with here.db.transaction() as tx:
                tx.notify(CHANNEL_WORK)
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await abort()
        async with here.db.transaction() as tx:
            tx.notify("probe")
        await remote.wait_for("probe")

        assert remote.items == [("probe", "")]
        assert local.items == [("probe", "")]


async def test_a_dead_peers_socket_is_removed_and_the_others_still_hear(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote = Heard()
        there.add_listener(remote)
        directory = directory_of(there)
        alive = sockets_in(directory)
        # What a SIGKILLed process leaves behind: a socket file nobody reads any more.
        stale = "999999-deadbeef.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(os.path.join(directory, stale))
        dead.close()

        assert stale in sockets_in(directory)

        run = await create_one(here)

        await remote.wait_for(CHANNEL_WORK)
        assert sockets_in(directory) == alive
        assert (await claim_one(there)).id == run.id


async def test_a_peer_that_does_not_read_never_blocks_a_commit_and_is_told_to_look_again(
    db_url: str,
) -> None:
    commits = 3 * datagram_queue_length() + 10
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        there.add_listener(Heard())
        with raw_peer(directory_of(there)) as peer:
            for i in range(commits):  # the peer's receive queue fills up; commits go on
                async with here.db.transaction() as tx:
                    tx.notify(CHANNEL_FINISHED, f"run_{i}")
            got = received(peer)
            assert 0 < len(got) < commits

            async with here.db.transaction() as tx:
                tx.notify(CHANNEL_WORK)

            # It missed some runs' "finished": the next datagram says "look again" first.
            assert received(peer) == [[(CHANNEL_FINISHED, ""), (CHANNEL_WORK, "")]]


async def test_foreign_datagrams_are_ignored(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote = Heard()
        there.add_listener(remote)
        (target,) = sockets_in(directory_of(there))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
            for junk in (b"not json", b'{"n": [[1, 2], "x"]}', b"\xff\xfe"):
                stranger.sendto(junk, os.path.join(directory_of(there), target))

        async with here.db.transaction() as tx:
            tx.notify("probe")
        await remote.wait_for("probe")

        assert remote.items == [("probe", "")]


async def test_without_a_socket_directory_it_falls_back_to_polling(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="perdure.storage.sqlite")
    (tmp_path / "perdure.db-wake").write_text("a file where the directory would go")
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        run = await create_one(here)

        assert local.items == [(CHANNEL_WORK, "")]  # this instance's own wake-up still works
        assert (await claim_one(there)).id == run.id  # and the other finds work by polling
        assert not wake_of(there).listening
        assert remote.items == []
    fallbacks = [r for r in caplog.records if "no cross-process wake-ups" in r.getMessage()]
    assert len(fallbacks) == 1  # once, however many instances and commits
    assert fallbacks[0].levelno == logging.DEBUG


async def test_without_unix_datagram_sockets_it_falls_back_to_polling(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="perdure.storage.sqlite")
    monkeypatch.setattr(wake_module, "_UNSUPPORTED", True)  # as on Windows
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        run = await create_one(here)

        assert local.items == [(CHANNEL_WORK, "")]
        assert (await claim_one(there)).id == run.id
        assert remote.items == []
    assert not (tmp_path / "perdure.db-wake").exists()
    assert [r.getMessage() for r in caplog.records if "no AF_UNIX" in r.getMessage()] != []


async def test_a_path_too_long_for_a_socket_uses_a_short_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    url = f"sqlite:///{deep / 'perdure.db'}"
    directory = ""
    try:
        async with open_storage(url) as here, open_storage(url) as there:
            remote = Heard()
            there.add_listener(remote)
            directory = directory_of(there)

            await create_one(here)

            await remote.wait_for(CHANNEL_WORK)
            assert directory.startswith(tempfile.gettempdir())
            assert directory_of(here) == directory  # every instance derives the same one
            assert not (deep / "perdure.db-wake").exists()
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def close_in_a_forked_child(wake: SocketWake) -> None:
    """Fork; the child closes its inherited copy of `wake` (what its shutdown or exit does)."""
    pid = os.fork()
    if pid == 0:
        try:
            wake.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_forked_child_closing_its_copy_leaves_the_parent_listening(db_url: str) -> None:
    async with open_storage(db_url) as here, open_storage(db_url) as there:
        remote = Heard()
        there.add_listener(remote)
        listening = sockets_in(directory_of(there))

        close_in_a_forked_child(wake_of(there))

        assert sockets_in(directory_of(there)) == listening
        await create_one(here)
        await remote.wait_for(CHANNEL_WORK)


async def test_memory_databases_have_no_wake_up_channel() -> None:
    async with open_storage("memory://") as storage:
        assert isinstance(storage.db, SQLiteDatabase)
        assert storage.db.wake is None
