"""The named-object registry: what aipc created, by whom, so that a crash leaves
something ``aipc objects`` can list and ``aipc clean`` can remove.

Each record is a small JSON file in the state directory (``$AIPC_STATE_DIR``,
else ``$XDG_RUNTIME_DIR/aipc``, else ``/tmp/aipc-<uid>``), created 0700 and
refused if another user owns it or others can write to it. A record names the
kind, the object's name, its identity (device and inode, or a SysV key and id,
so that a later object with the same name is never touched) and the owner (pid
and the process start time, so that a recycled pid is not mistaken for the
owner). Attaching to an object never writes a record: only its creator owns it.

Kinds, and what ``name``, ``dev`` and ``inode`` hold for each:

- ``"fifo"``: ``name`` the absolute path; ``dev``/``inode`` the node's.
- ``"mqueue"``: ``name`` the POSIX message queue name (``"/jobs"``, in the IPC
  namespace of the process that looks); ``dev``/``inode`` those of its
  descriptor (``fstat`` on the mq descriptor, which needs no ``/dev/mqueue``
  mount); a later check opens the queue by name to compare.
- ``"posix-semaphore"``: ``name`` the semaphore name (``"/lock"``);
  ``dev``/``inode`` those of its file, ``/dev/shm/sem.<name without the
  slash>``, which a later check compares (``lstat``).
- ``"unix-socket"``: ``name`` the absolute path of a socket file;
  ``dev``/``inode`` the file's. ``aipc clean`` removes it only if, besides
  its owner being dead, nobody listens on it (a passed listening socket may
  outlive its creator).
- ``"shm"``: ``name`` the POSIX shared memory name (``"/frames"``);
  ``dev``/``inode`` those of its file, ``/dev/shm/<name without the slash>``.
- ``"sysv-semaphore"`` and ``"sysv-message-queue"``: ``name`` the key as 8 hex
  digits (``"0x4a5b0001"``, the key taken as unsigned, as ``ipcs`` shows it);
  ``dev`` the same key as an unsigned int and ``inode`` the kernel's id
  (``semid`` / ``msqid``). A later object under the same key gets a new id, so
  a check reads ``/proc/sysvipc/sem`` or ``/proc/sysvipc/msg`` (of the IPC
  namespace of the process that looks) for both.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NamedObject",
    "clean",
    "list_objects",
    "mqueue_identity",
    "posix_semaphore_path",
    "register",
    "state_dir",
    "sysv_id",
    "sysv_name",
    "unix_socket_is_live",
    "unregister",
]


def state_dir() -> str:
    """The directory holding the records (created on first use)."""
    path = os.environ.get("AIPC_STATE_DIR")
    if not path:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        path = (
            os.path.join(runtime, "aipc")
            if runtime and os.path.isdir(runtime)
            else os.path.join(tempfile.gettempdir(), f"aipc-{os.getuid()}")
        )
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(
            f"aipc state directory {path!r} is not a directory owned by this user "
            "and closed to others; set AIPC_STATE_DIR to a private directory"
        )
    return path


def _proc_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # field 22 (starttime) counted after the ")" that ends the command name
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


@dataclass(frozen=True)
class NamedObject:
    """One registry record: a named kernel object aipc created.

    Attributes: ``kind`` ("fifo", "mqueue", "posix-semaphore", "sysv-semaphore",
    "sysv-message-queue"), ``name`` (path, name or hex key), ``dev`` and
    ``inode`` (its identity when created: device and inode, or for the SysV
    kinds the key and the id; see the module docstring), ``pid`` and
    ``pid_start`` (the owner).
    """

    kind: str
    name: str
    dev: int
    inode: int
    pid: int
    pid_start: int | None

    @property
    def owner_alive(self) -> bool:
        """Whether the creating process still runs (pid and start time match)."""
        start = _proc_start_time(self.pid)
        if self.pid_start is None:
            # the start time could not be read when the record was made: a
            # running process with that pid is taken for the owner (never
            # remove what might still be in use)
            return start is not None
        return start == self.pid_start

    def exists(self) -> bool:
        """Whether the object named ``name`` is still the one that was created."""
        probe = _PROBES.get(self.kind)
        return probe(self) if probe is not None else False


def _probe_path(obj: NamedObject) -> bool:
    try:
        st = os.lstat(obj.name)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (obj.dev, obj.inode)


def _remove_path(obj: NamedObject) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(obj.name)


def unix_socket_is_live(path: str) -> bool | None:
    """Whether a socket is bound to the socket file at ``path``.

    Probes with a non-blocking connect: refused means no socket is bound (a
    stale file); accepted, a full backlog (EAGAIN) or a socket of another type
    (EPROTOTYPE) mean a live one. ``None``: this process may not connect, so
    it cannot tell. A live stream server sees a connection that closes at once.
    """
    import socket

    probe = socket.socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True
    except PermissionError:
        return None
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            return True
        raise
    finally:
        probe.close()
    return True


def _remove_unix_socket(obj: NamedObject) -> None:
    # clean() checked that nobody listens (_IN_USE); check again just before
    if _probe_path(obj) and unix_socket_is_live(obj.name) is False:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(obj.name)


def mqueue_identity(name: str) -> tuple[int, int] | None:
    """(device, inode) of the POSIX message queue ``name``, or None if there is
    none, or it cannot be opened to tell (another user's 0600 queue).

    Opening a queue by name changes nothing in it (no message is touched, and
    only creation counts against RLIMIT_MSGQUEUE).
    """
    import posix_ipc

    for read, write in ((True, False), (False, True)):
        try:
            mq: Any = posix_ipc.MessageQueue(name, read=read, write=write)
        except posix_ipc.ExistentialError:
            return None
        except posix_ipc.PermissionsError:
            continue  # a mode without read permission: try write-only
        try:
            st = os.fstat(mq.mqd)
        finally:
            mq.close()
        return st.st_dev, st.st_ino
    return None


def _probe_mqueue(obj: NamedObject) -> bool:
    return mqueue_identity(obj.name) == (obj.dev, obj.inode)


def _remove_mqueue(obj: NamedObject) -> None:
    import posix_ipc

    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_message_queue(obj.name)


#: POSIX named semaphores live in /dev/shm as "sem.<name without the slash>"
_SHM_DIR = "/dev/shm"


def posix_semaphore_path(name: str) -> str:
    """The file in ``/dev/shm`` behind the POSIX named semaphore ``name``."""
    return os.path.join(_SHM_DIR, "sem." + name[1:])


def _posix_semaphore_identity(name: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(posix_semaphore_path(name))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _shm_identity(name: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(os.path.join(_SHM_DIR, name[1:]))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _probe_shm(obj: NamedObject) -> bool:
    return _shm_identity(obj.name) == (obj.dev, obj.inode)


def _remove_shm(obj: NamedObject) -> None:
    if _probe_shm(obj):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_SHM_DIR, obj.name[1:]))


def _probe_posix_semaphore(obj: NamedObject) -> bool:
    return _posix_semaphore_identity(obj.name) == (obj.dev, obj.inode)


def _remove_posix_semaphore(obj: NamedObject) -> None:
    import posix_ipc

    if _probe_posix_semaphore(obj):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(obj.name)


_SYSV_TABLES = {"sysv-semaphore": "sem", "sysv-message-queue": "msg"}


def sysv_name(key: int) -> str:
    """The record name of a SysV key: 8 hex digits of the key as unsigned."""
    return f"{key & 0xFFFFFFFF:#010x}"


def sysv_id(kind: str, key: int) -> int | None:
    """The id of the SysV object of ``kind`` ("sysv-semaphore",
    "sysv-message-queue") with ``key`` in this IPC namespace, or None.

    Reads ``/proc/sysvipc`` (which lists every object of the namespace, not
    only those this user may open), so it changes nothing in the object.
    """
    key &= 0xFFFFFFFF
    with open(f"/proc/sysvipc/{_SYSV_TABLES[kind]}") as f:
        next(f, None)  # header
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and int(fields[0]) & 0xFFFFFFFF == key:
                return int(fields[1])
    return None


def _probe_sysv(obj: NamedObject) -> bool:
    try:
        return sysv_id(obj.kind, obj.dev) == obj.inode
    except OSError:  # pragma: no cover - no /proc/sysvipc (no SysV IPC)
        return False


def _remove_sysv(obj: NamedObject) -> None:
    import sysv_ipc

    if not _probe_sysv(obj):
        return
    remove = (
        sysv_ipc.remove_semaphore
        if obj.kind == "sysv-semaphore"
        else sysv_ipc.remove_message_queue
    )
    with contextlib.suppress(sysv_ipc.ExistentialError):
        remove(obj.inode)


_PROBES: dict[str, Callable[[NamedObject], bool]] = {
    "fifo": _probe_path,
    "unix-socket": _probe_path,
    "mqueue": _probe_mqueue,
    "posix-semaphore": _probe_posix_semaphore,
    "shm": _probe_shm,
    "sysv-semaphore": _probe_sysv,
    "sysv-message-queue": _probe_sysv,
}
#: kinds whose objects may outlive their creator in use: never cleaned then
_IN_USE: dict[str, Callable[[NamedObject], bool]] = {
    "unix-socket": lambda obj: unix_socket_is_live(obj.name) is not False,
}
_REMOVERS: dict[str, Callable[[NamedObject], None]] = {
    "fifo": _remove_path,
    "unix-socket": _remove_unix_socket,
    "mqueue": _remove_mqueue,
    "posix-semaphore": _remove_posix_semaphore,
    "shm": _remove_shm,
    "sysv-semaphore": _remove_sysv,
    "sysv-message-queue": _remove_sysv,
}


def _record_path(kind: str, name: str) -> str:
    digest = hashlib.sha256(f"{kind}\0{name}".encode()).hexdigest()[:24]
    return os.path.join(state_dir(), f"{kind}-{digest}.json")


def register(kind: str, name: str, dev: int, inode: int) -> None:
    """Record that this process created ``name``."""
    pid = os.getpid()
    record = {
        "kind": kind,
        "name": name,
        "dev": dev,
        "inode": inode,
        "pid": pid,
        "pid_start": _proc_start_time(pid),
    }
    path = _record_path(kind, name)
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def unregister(kind: str, name: str, identity: tuple[int, int] | None = None) -> None:
    """Forget the record for ``name`` (after the object was removed).

    With ``identity`` (``dev``, ``inode``), only a record of that very object
    goes: a record a newer object under the same name left is kept.
    """
    path = _record_path(kind, name)
    if identity is not None:
        try:
            with open(path) as f:
                record = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            record = None  # unreadable: not a record of anything, drop it
        if (
            isinstance(record, dict)
            and (record.get("dev"), record.get("inode")) != identity
        ):
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_objects() -> list[NamedObject]:
    """Every record in the state directory."""
    out = []
    directory = state_dir()
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, entry)) as f:
                out.append(NamedObject(**json.load(f)))
        except (OSError, ValueError, TypeError):
            continue
    return out


def clean(*, dry_run: bool = False) -> list[NamedObject]:
    """Remove objects whose creator is dead and forget their records.

    An object whose name now belongs to something else (identity differs) is
    left alone; only its stale record goes. A socket somebody still listens on
    (a listener the dead creator handed to another process) is kept, with its
    record. Returns the objects removed.
    """
    removed = []
    for obj in list_objects():
        if obj.owner_alive:
            continue
        in_use = _IN_USE.get(obj.kind)
        if in_use is not None and obj.exists() and in_use(obj):
            # the creator is dead but the object still serves someone (a
            # listening socket it passed on): keep it, and its record
            continue
        if dry_run:
            if obj.exists():
                removed.append(obj)
            continue
        if obj.exists():
            remover = _REMOVERS.get(obj.kind)
            if remover is not None:
                remover(obj)
                removed.append(obj)
        unregister(obj.kind, obj.name)
    return removed
