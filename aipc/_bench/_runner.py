"""The ``aipc bench`` orchestrator: plans the groups, starts their processes,
interleaves their measurement blocks, shows progress, cleans up, and hands the
results to ``_report``.

The orchestrator measures nothing itself. For every group it creates the kernel
objects (pipes, eventfds, FIFOs and lock files in a private temporary
directory, the queues of the queue peers, POSIX message queues and semaphores
under names that carry its pid, unlinked when the group ends, failed or not;
pyzmq's peer binds its socket file in that directory; the UNIX socket rows'
peer listens on an abstract name that carries its pid; the ring rows' two
rings are handed to both children as aipc's hand-off describes them; the
iceoryx2 rows' children open services whose names carry its pid, and what a
killed child leaves in /dev/shm and /tmp/iceoryx2 is removed at the end),
starts the
peer and the driver with ``subprocess.Popen(..., pass_fds=...)`` in sessions of
their own (so that Ctrl-C reaches only this process, which then kills them) and
closes its own copies of the descriptors (so that each side sees end of stream
when the other dies). All groups start together and wait, blocked, for their
turn: the orchestrator then lets one driver at a time run one block (one round
in one placement), rotating through the groups, so that a burst of load from
elsewhere on the machine is shared by every row instead of spoiling one.
Children are killed and reaped on any error, timeout or interrupt, and also die
with this process if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import _report, _share
from ._plan import (
    BACKENDS,
    DISTRIBUTIONS,
    KIB,
    MECHANISM_KEYS,
    MECHANISMS,
    MIB,
    MSG_SIZE,
    REFERENCE_PEER,
    RING_FAMILIES,
    Config,
    Mechanism,
    PhaseInfo,
    Placement,
    build_blocks,
)

__all__ = ["run"]

_CHILD = "aipc._bench._child"


#: The families of the iceoryx2 rows, and where iceoryx2 keeps its state files.
_ICEORYX2_FAMILIES = ("iceoryx2", "iceoryx2-blocking", "iceoryx2-zero-copy")
_ICEORYX2_ROOT = "/tmp/iceoryx2"

#: The families whose peer listens on a UNIX socket and whose driver connects.
_SOCKET_FAMILIES = ("unix", "seqpacket", "channel", "anyio-unix", "anyio-seqpacket")


@dataclass
class Group:
    """One mechanism on one loop, measured by one driver/peer pair."""

    mechanism: Mechanism
    backend: str  # the loop both processes run: asyncio, uvloop, trio, blocking
    blocks: list[list[dict[str, Any]]]
    slots: list[int]  # the slot (round and placement) of each block
    infos: list[PhaseInfo]


@dataclass
class Outcome:
    """What came back from one group."""

    group: Group
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    hello: dict[str, Any] = field(default_factory=dict)
    caps: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0  # time spent running its blocks


class _Progress:
    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {text}..."
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _parse_mechanisms(value: str) -> list[str]:
    keys = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in keys if k not in MECHANISM_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown mechanism {', '.join(unknown) or repr(value)}; "
            f"choose from {','.join(MECHANISM_KEYS)}"
        )
    return keys


def _parse_placements(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in ("cross-core", "same-core")]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            "placement must be cross-core, same-core or both (comma-separated)"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``aipc bench`` options to ``parser``."""
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
        default="asyncio",
        help="the backend the aipc rows run on (default: asyncio); the peers "
        "always run on their own loops",
    )
    parser.add_argument(
        "--mechanism",
        type=_parse_mechanisms,
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(MECHANISM_KEYS)} (default: all)",
    )
    parser.add_argument(
        "--placement",
        type=_parse_placements,
        default=None,
        metavar="LIST",
        help="cross-core (processes pinned to two CPUs), same-core (both on one), "
        "or both (default)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a very short run with few iterations (a smoke test, not a measurement)",
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None, help="also write all results to FILE"
    )


def _placements(wanted: list[str] | None, notes: list[str]) -> list[Placement]:
    wanted = wanted or ["cross-core", "same-core"]
    cpus = sorted(os.sched_getaffinity(0))
    out: list[Placement] = []
    for name in wanted:
        if name == "cross-core":
            if len(cpus) < 2:
                notes.append("cross-core skipped: this process may use only one CPU")
                continue
            out.append(Placement(name, cpus[0], cpus[1]))
        else:
            out.append(Placement(name, cpus[0], cpus[0]))
    return out


def _plan(
    args: argparse.Namespace,
    config: Config,
    placements: list[Placement],
    notes: list[str],
) -> list[Group]:
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    selected = set(args.mechanism or MECHANISM_KEYS)
    modules = {"uvloop", "trio"} | {mod for m in MECHANISMS for mod in m.requires}
    available = {mod: importlib.util.find_spec(mod) is not None for mod in modules}
    for b in backends[:]:
        if b in available and not available[b]:
            notes.append(f"backend {b} skipped: {b} is not installed")
            backends.remove(b)
    groups: list[Group] = []
    next_id = 0
    for mech in MECHANISMS:
        if mech.key not in selected:
            continue
        missing = [m for m in mech.requires if not available.get(m, True)]
        if missing:
            names = ", ".join(DISTRIBUTIONS.get(m, m) for m in missing)
            notes.append(f"{mech.label} skipped: {names} not installed")
            continue
        if mech.loop is None:  # aipc rows, and peers written with anyio
            loops = [b for b in backends if b in mech.backends]
        else:
            loops = [mech.loop]
        for loop in loops:
            blocks, slots, infos = build_blocks(mech, loop, placements, config, next_id)
            next_id += len(infos)
            groups.append(Group(mech, loop, blocks, slots, infos))
    return groups


# --------------------------------------------------------------------------
# running one group


class _Resources:
    """The kernel objects of one group, as the orchestrator holds them."""

    def __init__(self) -> None:
        self.driver: dict[str, Any] = {}
        self.peer: dict[str, Any] = {}
        self.pass_driver: list[int] = []
        self.pass_peer: list[int] = []
        self._closers: list[Callable[[], object]] = []
        self._removers: list[Callable[[], object]] = []

    def on_close(self, fn: Callable[[], object]) -> None:
        """Register how to close a descriptor (done once the children have it)."""
        self._closers.append(fn)

    def on_remove(self, fn: Callable[[], object]) -> None:
        """Register how to remove a named object (done when the group ends)."""
        self._removers.append(fn)

    def close(self) -> None:
        """Close the descriptors still held here (idempotent)."""
        closers, self._closers = self._closers, []
        for fn in reversed(closers):
            try:
                fn()
            except OSError:
                pass

    def remove(self) -> None:
        """Close everything and remove the named objects (idempotent)."""
        self.close()
        removers, self._removers = self._removers, []
        for fn in reversed(removers):
            try:
                fn()
            except Exception:  # one failure must not keep the others
                pass


def _os_fd_closer(fd: int) -> Callable[[], None]:
    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            os.close(fd)

    return close


def _make_resources(group: Group, tmp: str, index: int) -> _Resources:
    import aipc

    res = _Resources()
    family = group.mechanism.family
    try:
        ctl_r, ctl_w = os.pipe()
        for fd in (ctl_r, ctl_w):
            res.on_close(_os_fd_closer(fd))
        res.driver["ctl"], res.peer["ctl"] = ctl_r, ctl_w
        res.pass_driver.append(ctl_r)
        res.pass_peer.append(ctl_w)

        # driver -> peer is "a", peer -> driver is "b"
        a_r: int
        a_w: int
        b_r: int
        b_w: int
        if family in ("signal", "anyio-signal", "lock", "filelock"):
            # The handshake goes both ways. Signal rows: no data channel,
            # signals go to a pid; the driver learns the peer's pid in the
            # handshake, and this pipe takes the driver's pid to the peer,
            # which answers every signal by signalling it back. Lock rows:
            # the peer must not wait for a lock before the driver holds its
            # two (see _child._Locks), and the driver writes on this pipe
            # once it does.
            p_r, p_w = os.pipe()
            res.on_close(_os_fd_closer(p_r))
            res.on_close(_os_fd_closer(p_w))
            res.driver.update(tx=None, rx=None, pid_fd=p_w)
            res.peer.update(tx=None, rx=None, pid_fd=p_r)
            res.pass_driver.append(p_w)
            res.pass_peer.append(p_r)
            if family in ("lock", "filelock"):
                # three lock files in the private directory (removed with it)
                paths = [os.path.join(tmp, f"{index}-lock{i}") for i in range(3)]
                for path in paths:
                    with open(path, "x"):
                        pass
                res.driver["locks"] = res.peer["locks"] = paths
            return res
        if family in ("mqueue", "semaphore"):
            # named objects, one each way, with names no other run can have;
            # the orchestrator's handles unlink them when the group ends,
            # whether it succeeded or not
            names = [f"/aipc-bench-{os.getpid()}-{index}-{d}" for d in ("ab", "ba")]
            for name in names:
                obj: aipc.MessageQueue | aipc.PosixSemaphore
                if family == "mqueue":
                    obj = aipc.create_message_queue(
                        name,
                        max_messages=_mqueue_depth(),
                        max_message_size=MSG_SIZE,
                        unlink_on_close=True,
                    )
                else:
                    obj = aipc.create_posix_semaphore(
                        name, initial_value=0, unlink_on_close=True
                    )
                res.on_remove(obj.close)
            res.driver.update(tx=names[0], rx=names[1])
            res.peer.update(tx=names[1], rx=names[0])
            return res
        if family == "fifo":
            ab = aipc.create_fifo(os.path.join(tmp, f"{index}-ab"))
            res.on_remove(ab.unlink)
            ba = aipc.create_fifo(os.path.join(tmp, f"{index}-ba"))
            res.on_remove(ba.unlink)
            res.driver.update(tx=ab.path, rx=ba.path)
            res.peer.update(tx=ba.path, rx=ab.path)
            return res
        if family in ("mp-queue", "faster-fifo"):
            a, b = _make_queues(family)
            # the queues live here until the group ends: dropping them then
            # closes their descriptors and (multiprocessing.Queue) unlinks
            # their named semaphores; the children opened theirs at start-up
            queues: list[object] = [a, b]
            res.on_remove(queues.clear)
            shared, fds = _share.dumps((a, b))
            for role in (res.driver, res.peer):
                role.update(tx=None, rx=None, shared=shared)
            res.pass_driver += fds
            res.pass_peer += fds
            return res
        if family in _SOCKET_FAMILIES:
            # an abstract name: no file, gone with the last socket that has it
            address = f"\0aipc-bench-{os.getpid()}-{index}"
            res.driver.update(tx=address, rx=address)
            res.peer.update(tx=address, rx=address)
            return res
        if family in RING_FAMILIES:
            _make_rings(res, family)
            return res
        if family in _ICEORYX2_FAMILIES:
            # the children open (or create) the services under these names and
            # delete their ports when they end; _Iceoryx2Files removes what a
            # killed child leaves behind
            base = f"aipc-bench-{os.getpid()}-{index}"
            res.driver.update(tx=base, rx=base)
            res.peer.update(tx=base, rx=base)
            return res
        if family in ("zmq", "zmq-obj", "zmq-asyncio"):
            path = os.path.join(tmp, f"{index}-zmq.sock")
            res.on_remove(lambda: _unlink_if_present(path))
            address = f"ipc://{path}"
            res.driver.update(tx=address, rx=address)
            res.peer.update(tx=address, rx=address)
            return res
        if family in ("mp", "mp-obj"):
            c1, c2 = multiprocessing.Pipe()
            res.on_close(c1.close)
            res.on_close(c2.close)
            res.driver.update(tx=c1.fileno(), rx=c1.fileno())
            res.peer.update(tx=c2.fileno(), rx=c2.fileno())
            res.pass_driver.append(c1.fileno())
            res.pass_peer.append(c2.fileno())
            return res
        if family == "eventfd":
            e1 = aipc.EventFd()
            res.on_close(e1.close)
            e2 = aipc.EventFd()
            res.on_close(e2.close)
            a_w = a_r = e1.fileno()
            b_w = b_r = e2.fileno()
        elif family in ("pipe", "channel-pipe"):
            ra, wa = aipc.create_pipe()
            res.on_close(ra.close)
            res.on_close(wa.close)
            rb, wb = aipc.create_pipe()
            res.on_close(rb.close)
            res.on_close(wb.close)
            a_r, a_w, b_r, b_w = ra.fileno(), wa.fileno(), rb.fileno(), wb.fileno()
        else:
            # raw, asyncio, trio: plain blocking pipes, as a user would have them;
            # the loops' transports switch their own copies to non-blocking
            a_r, a_w = os.pipe()
            res.on_close(_os_fd_closer(a_r))
            res.on_close(_os_fd_closer(a_w))
            b_r, b_w = os.pipe()
            res.on_close(_os_fd_closer(b_r))
            res.on_close(_os_fd_closer(b_w))
        res.driver.update(tx=a_w, rx=b_r)
        res.peer.update(tx=b_w, rx=a_r)
        res.pass_driver += sorted({a_w, b_r})
        res.pass_peer += sorted({b_w, a_r})
    except BaseException:
        res.remove()
        raise
    return res


def _make_rings(res: _Resources, family: str) -> None:
    """Two message rings, driver→peer and peer→driver, handed over as aipc's
    hand-off describes them: the children rebuild their ends from the
    descriptors (``_handoff.rebuild``). Rings are anonymous memfds, eventfds
    and a socket pair each: nothing named, nothing to remove."""
    import aipc
    from aipc import _handoff

    # driver→peer carries the 1 MiB messages: room for 15 of them at once
    # (iceoryx2's rows give their subscriber 64)
    big = family in ("ring", "ring-zero-copy", "ring-zero-copy-spin")
    capacities = {"ab": (16 * MIB) if big else (1 * MIB), "ba": 64 * KIB}
    ends: dict[str, tuple[aipc.RingReceiver, aipc.RingSender]] = {}
    for way, capacity in capacities.items():
        receiver, sender = aipc.create_ring(capacity)
        res.on_close(receiver.close)
        res.on_close(sender.close)
        ends[way] = (receiver, sender)
    for spec, pass_fds, (send, receive) in (
        (res.driver, res.pass_driver, (ends["ab"][1], ends["ba"][0])),
        (res.peer, res.pass_peer, (ends["ba"][1], ends["ab"][0])),
    ):
        for slot, end in (("tx", send), ("rx", receive)):
            # after this, closing our copy does not tell the other end
            kind, fds, meta = _handoff.describe(end, slot, "to a bench child")
            spec[slot] = {"kind": kind, "fds": list(fds), "meta": meta}
            pass_fds += fds


class _Iceoryx2Files:
    """What iceoryx2 leaves on the machine: the shared memory of its nodes and
    services in /dev/shm (``iox2_*``) and their bookkeeping under
    /tmp/iceoryx2.

    The children delete their ports and nodes when they end; a child that was
    killed leaves its node behind, "dead". ``cleanup`` (after the last group)
    removes the dead nodes' resources through iceoryx2 itself, then, if no
    live iceoryx2 node is left on the machine, the global files this run
    created (iceoryx2 keeps them once made). What existed before the run is
    left alone.
    """

    def __init__(self) -> None:
        self.before = self._present()

    @staticmethod
    def _present() -> set[str]:
        try:
            names = os.listdir("/dev/shm")
        except OSError:
            names = []
        found = {os.path.join("/dev/shm", n) for n in names if n.startswith("iox2_")}
        if os.path.exists(_ICEORYX2_ROOT):
            found.add(_ICEORYX2_ROOT)
        return found

    def cleanup(self) -> None:
        try:
            import iceoryx2 as iox2  # type: ignore[import-untyped]

            iox2.set_log_level(iox2.LogLevel.Error)
            alive = False
            for state in iox2.Node.list(
                iox2.ServiceType.Ipc, iox2.config.global_config()
            ):
                if isinstance(state, iox2.NodeState.Dead):
                    state._0.try_remove_stale_resources()
                else:  # alive, or another user's, or unknown: not ours
                    alive = True
        except Exception:  # a broken install: remove nothing more
            return
        if alive:  # another program uses iceoryx2: its files are not ours
            return
        for path in self._present() - self.before:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _unlink_if_present(path)


def _mqueue_depth() -> int:
    """The depth of the mqueue row's queues: 10 (Linux's default
    fs.mqueue.msg_max), or the sysctl's value if it is lower."""
    try:
        with open("/proc/sys/fs/mqueue/msg_max") as f:
            return max(1, min(10, int(f.read())))
    except (OSError, ValueError):
        return 10


def _make_queues(family: str) -> tuple[Any, Any]:
    """Two queues, driver→peer and peer→driver."""
    if family == "mp-queue":
        # the spawn context: its locks are named semaphores a child can reopen
        ctx = multiprocessing.get_context("spawn")
        return ctx.Queue(), ctx.Queue()
    import faster_fifo  # type: ignore[import-not-found]

    # The circular buffer: 4 MiB, so that multiprocessing's heap gives it an
    # arena of its own and closes that arena when the queue is dropped (it
    # keeps smaller arenas for reuse).
    size = 4 << 20
    return faster_fifo.Queue(size), faster_fifo.Queue(size)


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _spawn(
    role: str,
    group: Group,
    fds: dict[str, Any],
    pass_fds: list[int],
    stdin: int,
    stdout: int,
    stderr: TextIO,
) -> subprocess.Popen[bytes]:
    spec = {
        "role": role,
        "family": group.mechanism.family,
        "loop": group.backend,
        "parent_pid": os.getpid(),
        "blocks": group.blocks,
        **fds,
    }
    env = dict(os.environ)
    # every row means what its label says, whatever the caller's environment
    env.pop("AIPC_GENERIC_WAIT", None)
    env.update(group.mechanism.env)
    return subprocess.Popen(
        [sys.executable, "-m", _CHILD, json.dumps(spec)],
        pass_fds=pass_fds,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a zombie that won't die
        pass


def _tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class _Live:
    """One group's running pair of processes, as the orchestrator drives it."""

    def __init__(self, group: Group, index: int, tmp: str) -> None:
        self.group = group
        self.outcome = Outcome(group)
        self.infos = {info.id: info for info in group.infos}
        self.err_driver = os.path.join(tmp, f"{index}-driver.err")
        self.err_peer = os.path.join(tmp, f"{index}-peer.err")
        self.peer: subprocess.Popen[bytes] | None = None
        self.driver: subprocess.Popen[bytes] | None = None
        self._buf = b""
        try:
            self.res = _make_resources(group, tmp, index)
        except Exception as exc:  # a peer's package may be installed but broken
            self.res = _Resources()
            self.outcome.error = f"could not create its objects: {exc!r}"
            return
        try:
            with open(self.err_peer, "w") as ep, open(self.err_driver, "w") as ed:
                self.peer = _spawn(
                    "peer",
                    group,
                    self.res.peer,
                    self.res.pass_peer,
                    subprocess.DEVNULL,
                    subprocess.DEVNULL,
                    ep,
                )
                self.driver = _spawn(
                    "driver",
                    group,
                    self.res.driver,
                    self.res.pass_driver,
                    subprocess.PIPE,
                    subprocess.PIPE,
                    ed,
                )
        except BaseException:
            self.stop()
            raise
        # from now on only the children hold the descriptors
        self.res.close()

    @property
    def failed(self) -> bool:
        return bool(self.outcome.error)

    def fail(self, error: str) -> None:
        if not self.outcome.error:
            self.outcome.error = error
        self.stop()

    def go(self) -> bool:
        """Let the driver run its next block."""
        assert self.driver is not None
        assert self.driver.stdin is not None
        try:
            self.driver.stdin.write(b"go\n")
            self.driver.stdin.flush()
        except BrokenPipeError:
            self.fail("the driver exited early")
            return False
        return True

    def wait_for(self, kind: str, timeout: float, progress: _Progress) -> bool:
        """Read the driver's events until one of ``kind``; False on failure."""
        assert self.driver is not None
        assert self.driver.stdout is not None
        assert self.peer is not None
        out_fd = self.driver.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                event = json.loads(line)
                got = self._handle(event, progress)
                if got == kind:
                    return True
                if got == "error":  # the driver says why it is about to exit
                    message = str(event.get("message", "the driver failed"))
                    if self.peer.poll() is not None:  # the cause, rather
                        message = (
                            f"the peer exited with status {self.peer.returncode} "
                            f"(then the driver: {message})"
                        )
                    self.fail(message)
                    return False
            ready, _, _ = select.select([out_fd], [], [], 0.25)
            if ready:
                chunk = os.read(out_fd, 1 << 16)
                if not chunk:
                    status = self.driver.wait()
                    self.fail(f"the driver exited with status {status}")
                    return False
                self._buf += chunk
                continue
            if self.peer.poll() is not None:
                self.fail(f"the peer exited with status {self.peer.returncode}")
                return False
            if time.monotonic() > deadline:
                self.fail(f"no answer from the driver within {timeout:.0f} s")
                return False

    def _handle(self, event: dict[str, Any], progress: _Progress) -> str:
        kind = str(event.pop("event"))
        out = self.outcome
        if kind == "start":
            progress.step(self.infos[event["id"]].describe())
        elif kind == "result":
            out.results[event.pop("id")] = event
        elif kind == "hello":
            out.hello = event
        elif kind == "cap":
            out.caps.append(event)
        return kind

    def finish(self, timeout: float) -> None:
        """After the last block: both processes should exit on their own."""
        if self.failed:
            return
        assert self.driver is not None
        assert self.peer is not None
        try:
            status = self.driver.wait(timeout=timeout)
            pstatus = self.peer.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail("a child did not exit after the last block")
            return
        if status != 0:
            self.fail(f"the driver exited with status {status}")
        elif pstatus != 0:
            self.fail(f"the peer exited with status {pstatus}")
        else:
            self.stop()

    def stop(self) -> None:
        """Kill and reap both processes, close and remove everything (idempotent)."""
        _kill(self.driver)
        _kill(self.peer)
        for proc in (self.driver, self.peer):
            if proc is not None:
                for f in (proc.stdin, proc.stdout):
                    if f is not None:
                        try:
                            f.close()
                        except BrokenPipeError:
                            pass
        self.res.remove()
        if self.outcome.error and "\n" not in self.outcome.error:
            details = [t for t in (_tail(self.err_driver), _tail(self.err_peer)) if t]
            if details:
                self.outcome.error += "\n" + "\n".join(details)


def _measure(
    groups: list[Group],
    tmp: str,
    config: Config,
    placements: list[Placement],
    progress: _Progress,
    lives: list[_Live],
) -> None:
    """Start every group, then run the block of slot k of every group that has
    one, for each k in turn."""
    for index, group in enumerate(groups):
        lives.append(_Live(group, index, tmp))
    for live in lives:
        if not live.failed:
            live.wait_for("ready", config.start_timeout, progress)
        if live.failed:
            g = live.group
            first = live.outcome.error.splitlines()[0]
            progress.say(f"{g.mechanism.label} [{g.backend}] failed: {first}")
    nslots = config.rounds * len(placements)
    for k in range(nslots):
        # rotate the order, so that no row always follows the same neighbour
        shift = k % len(lives)
        for live in lives[shift:] + lives[:shift]:
            if live.failed or k not in live.group.slots:
                continue
            t0 = time.perf_counter()
            if live.go():
                live.wait_for("done", config.block_timeout, progress)
            live.outcome.seconds += time.perf_counter() - t0
            if live.failed:
                g = live.group
                first = live.outcome.error.splitlines()[0]
                progress.say(f"{g.mechanism.label} [{g.backend}] failed: {first}")
    for live in lives:
        if live.driver is not None and live.driver.stdin is not None:
            try:
                live.driver.stdin.close()
            except BrokenPipeError:
                pass
    for live in lives:
        live.finish(30.0)


# --------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM arrived: the bench stops as after Ctrl-C (a BaseException, so
    that no ``except Exception`` of a row takes it for the row's failure)."""


def _on_sigterm(signum: int, frame: object) -> None:
    # once: a second SIGTERM must not cut the clean-up short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated


def run(args: argparse.Namespace) -> int:
    """Run ``aipc bench`` with parsed ``args``; return the exit status.

    Ctrl-C (SIGINT) and SIGTERM both stop the run: the children are killed,
    the named objects and temporary files removed, the rows finished so far
    printed; the status is 130 or 143. SIGTERM's handler is installed only
    when this runs in the main thread, and the previous one is restored."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    except _Terminated:  # before or after the measuring: nothing to remove
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = Config.quick() if args.quick else Config.default()
    notes: list[str] = []
    placements = _placements(args.placement, notes)
    if not placements:
        print("aipc bench: no CPU placement can run here", file=sys.stderr)
        return 2
    groups = _plan(args, config, placements, notes)
    if not groups:
        print("aipc bench: nothing to measure", file=sys.stderr)
        for note in notes:
            print(f"  {note}", file=sys.stderr)
        return 2
    machine = _report.machine_info(placements, config.rounds)
    progress = _Progress(sum(len(g.infos) for g in groups), sys.stderr)
    progress.say(
        f"aipc bench: starting {2 * len(groups)} processes "
        f"({len(groups)} mechanism/loop pairs)"
    )
    lives: list[_Live] = []
    interrupted = 0  # the exit status of a run stopped by a signal
    tmp = tempfile.mkdtemp(prefix="aipc-bench-")
    iceoryx2_files = None
    if any(g.mechanism.family in _ICEORYX2_FAMILIES for g in groups):
        iceoryx2_files = _Iceoryx2Files()
    try:
        with _share.stop_tracker_after():
            try:
                _measure(groups, tmp, config, placements, progress, lives)
            finally:
                for live in lives:
                    live.stop()
    except (KeyboardInterrupt, _Terminated) as exc:
        interrupted = 143 if isinstance(exc, _Terminated) else 130
        progress.say("interrupted: children killed, temporary files removed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if iceoryx2_files is not None:
            iceoryx2_files.cleanup()
        progress.finish()
    seconds = time.perf_counter() - started
    outcomes = [live.outcome for live in lives]
    rows = _report.build_rows(outcomes, placements, REFERENCE_PEER)
    notes += _report.outcome_notes(outcomes)
    print(_report.format_table(rows, machine, notes, seconds, args))
    if args.json:
        _report.write_json(
            args.json, rows, outcomes, machine, notes, seconds, args, config
        )
    if interrupted:
        return interrupted
    return 1 if any(o.error for o in outcomes) else 0
