"""The named-object registry: what aipc created, by whom, so that a crash leaves
something ``aipc objects`` can list and ``aipc clean`` can remove.

Each record is a small JSON file in the state directory (``$AIPC_STATE_DIR``,
else ``$XDG_RUNTIME_DIR/aipc``, else ``/tmp/aipc-<uid>``), created 0700 and
refused if another user owns it or others can write to it. A record names the
kind, the object's name, its identity (device and inode, so that a later object
with the same name is never touched) and the owner (pid and the process start
time, so that a recycled pid is not mistaken for the owner). Attaching to an
object never writes a record: only its creator owns it.

Kinds: ``"fifo"`` (an absolute path) and ``"mqueue"`` (a POSIX message queue
name such as ``"/jobs"``, in the IPC namespace of the process that looks). A
message queue's identity is the device and inode of its descriptor
(``fstat`` on the mq descriptor, which needs no ``/dev/mqueue`` mount); a
later check opens the queue by name to compare.
"""

from __future__ import annotations

import contextlib
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
    "register",
    "state_dir",
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

    Attributes: ``kind`` ("fifo", "mqueue"), ``name`` (path or name), ``dev`` and
    ``inode`` (its identity when created), ``pid`` and ``pid_start`` (the owner).
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


_PROBES: dict[str, Callable[[NamedObject], bool]] = {
    "fifo": _probe_path,
    "mqueue": _probe_mqueue,
}
_REMOVERS: dict[str, Callable[[NamedObject], None]] = {
    "fifo": _remove_path,
    "mqueue": _remove_mqueue,
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


def unregister(kind: str, name: str) -> None:
    """Forget the record for ``name`` (after the object was removed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_record_path(kind, name))


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
    left alone; only its stale record goes. Returns the objects removed.
    """
    removed = []
    for obj in list_objects():
        if obj.owner_alive:
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
