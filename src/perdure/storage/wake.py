"""Cross-process wake-ups for SQLite, the file database's stand-in for LISTEN/NOTIFY.

Every storage instance with listeners binds a Unix datagram socket in one private directory
per database file (`<db>-wake/<pid>-<random>.sock`, mode 0700). After a commit that queued
notifications, the instance sends one datagram — the same JSON payload as PostgreSQL's NOTIFY
(`perdure.storage.notifications`) — to every other socket in that directory. Receivers read
on their event loop (`loop.add_reader`, no thread) and dispatch to their listeners.

It is an optimisation, never the only way work is found: any failure (no AF_UNIX datagram
sockets, a path too long, a directory that cannot be made private, a full peer buffer)
costs latency only, because workers and waiters still poll. So nothing here raises: failures
fall back to polling, logged once at debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from perdure.storage.notifications import decode_notifications, encode_notifications

log = logging.getLogger("perdure.storage.sqlite")

Notifications = list[tuple[str, str]]

#: The socket directory sits beside the database file, named like SQLite's own `-wal`/`-shm`.
WAKE_DIR_SUFFIX = "-wake"
SOCKET_SUFFIX = ".sock"
#: Longest socket path AF_UNIX accepts on every Unix we run on (sun_path is 108 bytes on
#: Linux, 104 on macOS and the BSDs, terminating NUL included).
MAX_SOCKET_PATH = 103
#: Room for "/<pid>-<8 hex>.sock" (pids have at most 7 digits on Linux).
SOCKET_NAME_ROOM = 22
#: A listing taken within this long of the directory's last change may miss a socket bound in
#: the same mtime tick (the kernel stamps with a coarse clock; some filesystems keep whole
#: seconds), so such a listing is re-taken on every send until the change is this old.
RACY_WINDOW_NS = 2_000_000_000
#: Re-list at least this often whatever the mtime says (clock steps, filesystems that lie).
MAX_LISTING_AGE_NS = 5_000_000_000
#: Datagrams read per readable event: a flood from busy peers must not starve the loop.
MAX_DRAIN = 64
RECV_BYTES = 65536

#: Windows has AF_UNIX stream sockets at most, no datagrams (and no uids): poll there.
_UNSUPPORTED = sys.platform == "win32" or not hasattr(socket, "AF_UNIX")

_fallbacks_logged: set[str] = set()
_fallbacks_lock = threading.Lock()


def _fall_back(db_path: str, reason: str) -> None:
    """Log once per database per process: a missing wake-up is a latency matter only."""
    with _fallbacks_lock:
        if db_path in _fallbacks_logged:
            return
        _fallbacks_logged.add(db_path)
    log.debug(
        "no cross-process wake-ups for SQLite database %s (%s); other processes' work is "
        "found by polling",
        db_path,
        reason,
    )


def wake_dir(db_path: str) -> str | None:
    """Where the processes sharing `db_path` bind their sockets: beside the database file, or,
    when that path is too long for AF_UNIX, a directory in the temp dir named by a hash of the
    database's real path (so every process derives the same one). None when neither fits."""
    real = os.path.realpath(db_path)
    beside = real + WAKE_DIR_SUFFIX
    if len(os.fsencode(beside)) + SOCKET_NAME_ROOM <= MAX_SOCKET_PATH:
        return beside
    if _UNSUPPORTED:
        return None
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    short = os.path.join(tempfile.gettempdir(), f"perdure-{os.getuid()}-{digest}")
    if len(os.fsencode(short)) + SOCKET_NAME_ROOM <= MAX_SOCKET_PATH:
        return short
    return None


def _make_private_dir(path: str) -> None:
    """Create `path` (0700), or accept an existing one only if it is a real directory of ours
    that nobody else can enter: another user must not read our wake-ups or plant sockets."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} exists and is not a directory")
    if info.st_uid != os.getuid():
        raise OSError(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: e.g. made by hand under a permissive umask


def _release(sockets: list[socket.socket], paths: list[tuple[str, int]]) -> None:
    # Also run by weakref.finalize at garbage collection or exit: unlink our socket files so
    # peers need not find them dead, and close the sockets without a ResourceWarning. A
    # process forked after the bind closes its inherited copy but must not unlink the path:
    # the socket is still its parent's.
    for sock in sockets:
        sock.close()
    sockets.clear()
    for path, pid in paths:
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)
    paths.clear()


class SocketWake:
    """Sends this instance's notifications to the other instances on one SQLite file, and
    receives theirs. `send` may be called from any thread; `listen` and `close` on the event
    loop that receives."""

    def __init__(self, db_path: str, origin: str, deliver: Callable[[Notifications], None]) -> None:
        self._db_path = db_path
        self._origin = origin
        self._deliver = deliver
        self._dir = wake_dir(db_path)
        self._family: int | None = None if _UNSUPPORTED else socket.AF_UNIX
        self._lock = threading.Lock()  # the peer cache and sender; commits may run on threads
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()  # of the process that listens
        self._own_name: str | None = None
        self._listen_failed = False
        self._closed = False
        self._peers: list[str] = []
        self._listed_mtime: int | None = None
        self._listed_at = 0
        #: Channels of datagrams a peer missed (its buffer was full): sent as "look again".
        self._owed: dict[str, set[str]] = {}
        self._sockets: list[socket.socket] = []
        self._paths: list[tuple[str, int]] = []  # (socket path, pid that bound it)
        self._finalizer = weakref.finalize(self, _release, self._sockets, self._paths)

    @property
    def listening(self) -> bool:
        return self._receiver is not None

    @property
    def directory(self) -> str | None:
        return self._dir

    # --- receiving -----------------------------------------------------------------------

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind this instance's socket and read it on `loop`; on failure, fall back quietly."""
        if self._receiver is not None or self._listen_failed or self._closed:
            return
        if self._family is None or self._dir is None:
            self._listen_failed = True
            why = "no AF_UNIX sockets" if self._family is None else "socket path too long"
            _fall_back(self._db_path, why)
            return
        name = f"{os.getpid()}-{secrets.token_hex(4)}{SOCKET_SUFFIX}"
        path = os.path.join(self._dir, name)
        sock: socket.socket | None = None
        try:
            _make_private_dir(self._dir)
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(path)
            self._paths.append((path, os.getpid()))
            loop.add_reader(sock.fileno(), self._on_readable)
        except (OSError, NotImplementedError) as exc:  # e.g. a loop without add_reader
            if sock is not None:
                sock.close()
            _release([], self._paths)
            self._listen_failed = True
            _fall_back(self._db_path, f"cannot listen at {path}: {exc}")
            return
        self._sockets.append(sock)
        self._receiver = sock
        self._loop = loop
        self._pid = os.getpid()
        with self._lock:
            self._own_name = name
            self._listed_mtime = None  # our own bind changed the directory: list it again

    def _on_readable(self) -> None:
        sock = self._receiver
        if sock is None:
            return
        received: Notifications = []
        for _ in range(MAX_DRAIN):
            try:
                data = sock.recv(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("reading a SQLite wake-up failed: %s", exc)
                break
            received += decode_notifications(data.decode(errors="replace"), self._origin)
        if received:
            try:
                self._deliver(received)
            except Exception:  # a listener's bug must not unregister our reader
                log.exception("a notification listener failed")

    # --- sending -------------------------------------------------------------------------

    def send(self, notifications: Sequence[tuple[str, str]]) -> None:
        """Send a committed transaction's notifications to every other listening instance.
        Never blocks and never raises: a peer that cannot take it now will poll."""
        directory = self._dir
        if directory is None or self._family is None or not notifications:
            return
        payload: bytes | None = None
        with self._lock:
            if self._closed:  # a commit on another thread racing close(): nothing to open
                return
            peers = self._list_peers(directory)
            if not peers:
                return
            try:
                sender = self._sender or self._open_sender()
            except OSError as exc:
                _fall_back(self._db_path, f"cannot create a socket: {exc}")
                return
            dead: list[str] = []
            for name in peers:
                owed = self._owed.pop(name, None)
                if owed:
                    data = self._encode([(channel, "") for channel in owed] + [*notifications])
                else:
                    payload = payload or self._encode(notifications)
                    data = payload
                try:
                    sender.sendto(data, os.path.join(directory, name))
                except (ConnectionRefusedError, FileNotFoundError):
                    dead.append(name)  # nobody reads it: its process died without cleanup
                except OSError:  # buffer full (EAGAIN, ENOBUFS) or transient: owe a look
                    self._owed[name] = (owed or set()) | {channel for channel, _ in notifications}
            for name in dead:
                self._remove_dead(directory, name)

    def _encode(self, notifications: Sequence[tuple[str, str]]) -> bytes:
        return encode_notifications(self._origin, notifications).encode()

    def _open_sender(self) -> socket.socket:
        assert self._family is not None
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sockets.append(sock)
        self._sender = sock
        return sock

    def _list_peers(self, directory: str) -> list[str]:
        """The other sockets in the directory, re-listed only when it changed (its mtime): a
        bulk trigger pays one stat per commit, not a listdir. Holds `self._lock`."""
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:  # no directory yet: nobody listens
            self._peers, self._listed_mtime = [], None
            return self._peers
        now = time.time_ns()
        if (
            mtime != self._listed_mtime
            or self._listed_at - mtime < RACY_WINDOW_NS
            or now - self._listed_at > MAX_LISTING_AGE_NS
        ):
            try:
                names = os.listdir(directory)
            except OSError:
                names = []
            own = self._own_name
            self._peers = [n for n in names if n.endswith(SOCKET_SUFFIX) and n != own]
            self._listed_mtime, self._listed_at = mtime, now
            for gone in self._owed.keys() - set(self._peers):
                del self._owed[gone]
        return self._peers

    def _remove_dead(self, directory: str, name: str) -> None:
        # Safe against a live peer: names are unique (pid + random), so this path can only be
        # the dead socket; a process that restarts binds a new name.
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass  # another sender removed it first
        else:
            log.debug("removed the stale wake-up socket %s of a dead process", name)
        if name in self._peers:
            self._peers.remove(name)
        self._owed.pop(name, None)

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and remove our socket; idempotent."""
        receiver, self._receiver = self._receiver, None
        loop, self._loop = self._loop, None
        # A forked child shares its parent's epoll instance: unregistering there would stop
        # the parent's reads, so only the process that listens unregisters.
        owner = self._pid == os.getpid()
        if receiver is not None and loop is not None and owner and not loop.is_closed():
            # RuntimeError/ValueError: called from another thread or loop at exit.
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_reader(receiver.fileno())
        with self._lock:
            self._closed = True
            self._sender = None
            self._finalizer()
