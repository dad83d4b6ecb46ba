"""What ``aipc bench`` measures: mechanisms, placements, phases and their sizes.

This module is shared by the orchestrator (``_runner``) and the two measuring
processes (``_child``); it imports nothing heavy.

A *group* is one mechanism on one event loop, measured by one pair of processes:
the *driver* (it sends, times and reports) and the *peer* (it echoes and
acknowledges). Both walk the same *blocks* of *phases* in the same order; the
driver starts each block when the orchestrator says so:

- ``pin``: each process pins itself to its CPU for the block's placement;
- ``cap``: the driver resizes the driver→peer pipe (pipe families only);
- ``tput``: one-way transfer of ``bytes`` in ``chunk``-sized sends, acknowledged
  by the peer with one byte at the end of each repetition (after a shorter,
  untimed warm-up transfer);
- ``msgs``: one-way stream of ``n`` messages of ``size`` bytes, sent back to
  back and acknowledged the same way (after ``warmup`` untimed messages); the
  peer of a byte stream counts bytes, reading up to ``read`` at a time, since a
  byte stream keeps no message boundaries;
- ``rtt``: round trips of 8-byte messages (the peer echoes them); on the
  signal rows, one signal each way; on the hand-off rows (locks, semaphores)
  one hand-off each way, reported per hand-off (half a round trip).

The *object* rows (aipc's object channels and the peers they are compared
with) send one Python object in every message instead of bytes: ``OBJECT``,
a dict whose msgpack encoding is ``MSG_SIZE`` bytes, in the msgs/s phase and
in the round trips.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "BACKENDS",
    "CHUNKS",
    "NO_REFERENCE",
    "DEFAULT_CAPACITY",
    "MECHANISMS",
    "MSG_SIZE",
    "OBJECT",
    "RAISED_CAPACITY",
    "RING_BATCH",
    "RING_FAMILIES",
    "RING_SPIN_US",
    "Config",
    "Mechanism",
    "PhaseInfo",
    "Placement",
    "build_blocks",
]

KIB = 1024
MIB = 1024 * 1024

#: The backends aipc rows can run on.
BACKENDS = ("asyncio", "uvloop", "trio")

#: The chunk sizes of the throughput columns.
CHUNKS = (64 * KIB, MIB)

#: The size of the messages of the msgs/s column.
MSG_SIZE = 64

#: What the object rows send: its msgpack encoding is MSG_SIZE bytes (pickle's,
#: multiprocessing's, is 95).
OBJECT = {
    "seq": 123456,
    "kind": "quote",
    "sym": "ACME",
    "bid": 101.25,
    "ask": 101.5,
    "size": 300,
}

#: The most a byte-stream peer reads at once in the msgs/s phase.
MSG_READ = 64 * KIB

#: The distribution that installs each module a peer requires (for the notes).
DISTRIBUTIONS = {"zmq": "pyzmq", "faster_fifo": "faster-fifo"}

#: The spin budget of both ends of the "aipc ring (spin)" row, in µs.
RING_SPIN_US = 200
#: The families of the shared-memory ring rows (the orchestrator makes their
#: rings: _runner._make_rings).
RING_FAMILIES = (
    "ring",
    "ring-spin",
    "ring-batched",
    "ring-zero-copy",
    "ring-zero-copy-spin",
)

#: The in-place rows (aipc's loan/lease and iceoryx2's) move this many times
#: the bytes of a default throughput repetition: 1 MiB messages that are not
#: copied pass at 150 to 250 GB/s here, so the default 48 of them took a
#: quarter of a millisecond, and a blocking acknowledgement (about 40 µs
#: across the cores) or one preemption weighed up to a third of it.
ZERO_COPY_SCALE = 8

#: How many messages the "aipc ring (batched)" row sends per send_many.
RING_BATCH = 256

#: Linux's default pipe capacity, set explicitly before the default-capacity rows.
DEFAULT_CAPACITY = 64 * KIB

#: The capacity of the "(1 MiB capacity)" rows (Linux's default fs.pipe-max-size).
RAISED_CAPACITY = MIB

#: A ``Mechanism.reference`` that means: no ratio column for this row.
NO_REFERENCE = "-"

#: The peer each aipc backend is compared with: the same loop's own pipe streams
#: (unless the mechanism names its own ``reference``).
REFERENCE_PEER = {
    "asyncio": "asyncio-pipe",
    "uvloop": "uvloop-pipe",
    "trio": "trio-fdstream",
}


@dataclass(frozen=True)
class Mechanism:
    """One row family of the table.

    ``family`` selects the code in ``_child``; ``loop`` is the fixed event loop
    of a peer (``"blocking"`` for peers without a loop), or ``None`` for rows
    that run on each backend chosen with ``--backend``: the aipc rows, and
    peers written with anyio. ``throughput`` selects the GB/s columns, of the
    chunk sizes in ``chunks`` (a seqpacket message cannot be 1 MiB), ``msgs``
    the msgs/s column, ``capacity`` the "(1 MiB capacity)" rows; ``requires``
    names the modules a peer needs (skipped without them). ``reference`` is the
    key of the peer an aipc row's ratios compare with, on the same backend
    (by default the loop's own pipe streams, ``REFERENCE_PEER``;
    ``NO_REFERENCE``: none). ``round_every`` > 1 measures the row in every
    k-th round only (the first, then every k-th): fewer samples, still spread
    over the whole run. ``divisor`` > 1 divides the iteration counts of its
    rtt phases (round trips and warm-up) and msgs/s phases (messages) by that
    much: for rows that are slow by design, or that would stretch the default
    run. ``msgs_scale`` multiplies the messages of its msgs/s phase (after
    ``divisor``): for rows so fast that a repetition of the default count
    would time mostly its wake-up and acknowledgement; ``tput_scale`` does the
    same for the bytes of its throughput phases. ``handoff`` marks the
    rows whose rtt samples are one hand-off (half a round trip) rather than a
    round trip.
    """

    key: str
    label: str
    family: str
    aipc: bool
    loop: str | None
    throughput: bool
    msgs: bool
    capacity: bool
    backends: tuple[str, ...] = BACKENDS
    requires: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    reference: str = ""
    round_every: int = 1
    divisor: int = 1
    msgs_scale: int = 1
    tput_scale: int = 1
    handoff: bool = False
    chunks: tuple[int, ...] = CHUNKS
    rtt: bool = True


#: The object channel over a UNIX stream (also over pipes, below).
_CHANNEL = Mechanism(
    "channel",
    "aipc channel (UNIX stream)",
    "channel",
    aipc=True,
    loop=None,
    throughput=False,
    msgs=True,
    capacity=False,
    requires=("msgspec",),
    reference="zmq-asyncio",
    round_every=2,
    divisor=2,
    note="aipc.create_channel(stream) over an aipc UNIX stream, default "
    "MsgpackCodec: each message one 64-byte object, 68 bytes framed; "
    "ratio: ÷ pyzmq objects (zmq.asyncio) on the same backend (none on trio)",
)

MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism(
        "pipe",
        "aipc pipe",
        "pipe",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=True,
    ),
    Mechanism(
        "pipe-generic",
        "aipc pipe (generic wait)",
        "pipe",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        env={"AIPC_GENERIC_WAIT": "1"},
        note="AIPC_GENERIC_WAIT=1: anyio.wait_readable / anyio.lowlevel.checkpoint "
        "instead of _core's fast paths (on asyncio and uvloop, one epoll "
        "registration added and removed per wait)",
    ),
    Mechanism(
        "fifo",
        "aipc FIFO",
        "fifo",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
    ),
    Mechanism(
        "eventfd",
        "aipc eventfd",
        "eventfd",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        note="set() / await wait() ping-pong on two eventfds (no payload: no msgs/s)",
    ),
    Mechanism(
        "signal",
        "aipc signal",
        "signal",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        reference="anyio-signal",
        round_every=2,
        note="send_signal(pid, SIGRTMIN+1, i) / await receive() ping-pong, "
        "SIGRTMIN+2 back with the same value (checked); no msgs/s: a signal "
        "carries a 4-byte value, not a 64-byte message",
    ),
    Mechanism(
        "mqueue",
        "aipc POSIX mqueue",
        "mqueue",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=True,
        capacity=False,
        reference="pipe",
        round_every=2,
        divisor=2,
        note="await send() / await receive() on two POSIX message queues, one "
        "each way (created by the orchestrator, 10 messages of up to 64 bytes, "
        "unlinked at the end); one message per receive; ratio: ÷ aipc pipe on "
        "the same backend and placement",
    ),
    Mechanism(
        "lock",
        "aipc FileLock hand-off",
        "lock",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        reference="filelock",
        round_every=2,
        divisor=4,
        handoff=True,
        note="release() in one process to the return of the other's waiting "
        "acquire(), half a ping-pong over three flock locks; ratio: ÷ filelock "
        "(asyncio only)",
    ),
    Mechanism(
        "semaphore",
        "aipc POSIX semaphore hand-off",
        "semaphore",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        reference=NO_REFERENCE,
        round_every=2,
        divisor=4,
        handoff=True,
        note="release() in one process to the return of the other's waiting "
        "acquire(), half a ping-pong over two named semaphores (initial value 0)",
    ),
    Mechanism(
        "unix",
        "aipc UNIX stream",
        "unix",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
        reference="anyio-unix",
        round_every=2,
        divisor=2,
        note="the peer listens with aipc.create_unix_listener (an abstract "
        "name), the driver connects with aipc.connect_unix_stream; ratio: ÷ "
        "anyio UNIX stream on the same backend and placement",
    ),
    Mechanism(
        "seqpacket",
        "aipc UNIX seqpacket",
        "seqpacket",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
        reference="anyio-seqpacket",
        chunks=(64 * KIB,),
        round_every=3,
        divisor=2,
        note="create_unix_listener(kind='seqpacket') / connect_unix_seqpacket; "
        "one message per send and receive, so no 1 MiB column (a message must "
        "fit the socket buffer); ratio: ÷ anyio UNIX seqpacket",
    ),
    _CHANNEL,
    replace(
        _CHANNEL,
        key="channel-pipe",
        label="aipc channel (pipe)",
        family="channel-pipe",
        note="the same over two aipc pipes (a ChannelSender and a "
        "ChannelReceiver in each process)",
    ),
    Mechanism(
        "ring",
        "aipc ring",
        "ring",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
        reference="iceoryx2-blocking",
        round_every=2,
        divisor=2,
        note="two message rings (aipc.create_ring, spin_us=0; 16 MiB "
        "driver→peer, 64 KiB back), made by the orchestrator and handed to both "
        "processes; await send() / "
        "await receive(), a copy in and a copy out, one message per call; "
        "ratio: ÷ iceoryx2 (blocking), the peer that sleeps as the ring does "
        "(issue 5 also compares the round trip with aipc pipe's: its row)",
    ),
    Mechanism(
        "ring-spin",
        "aipc ring (spin)",
        "ring-spin",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        reference="iceoryx2",
        round_every=2,
        divisor=2,
        note=f"the same rings with spin_us={RING_SPIN_US} on both ends: each "
        f"side busy-waits up to {RING_SPIN_US} µs before it sleeps, which burns "
        "CPU (a whole core while it waits; on one core it takes the time its "
        "peer needs); round trips only; ratio: ÷ iceoryx2 (busy poll)",
    ),
    Mechanism(
        "ring-batched",
        "aipc ring (batched)",
        "ring-batched",
        aipc=True,
        loop=None,
        throughput=False,
        msgs=True,
        capacity=False,
        rtt=False,
        reference="iceoryx2",
        round_every=2,
        divisor=2,
        # 2,000 messages take under a millisecond: the wake-up and the
        # acknowledgement of each repetition were a quarter of its time
        msgs_scale=8,
        note=f"the msgs/s phase with send_many() of {RING_BATCH} messages and "
        "receive_many() (every message available), 8 times as many messages "
        "per repetition as the other rows; issue 5's target is "
        "2,000,000/s; ratio: ÷ iceoryx2 (busy poll), one message at a time",
    ),
    Mechanism(
        "ring-zero-copy",
        "aipc ring (zero-copy)",
        "ring-zero-copy",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=False,
        capacity=False,
        rtt=False,
        reference="iceoryx2-zero-copy",
        chunks=(MIB,),
        round_every=2,
        tput_scale=ZERO_COPY_SCALE,
        note="1 MiB messages with await loan() (the sender writes an 8-byte "
        "header in place and commits) and await receive_lease() (the receiver "
        "reads those 8 bytes in place and releases): no copy of the payload; "
        f"{ZERO_COPY_SCALE} times the bytes per repetition of the other rows, "
        "as iceoryx2's in-place row; ratio: ÷ iceoryx2 (in place)",
    ),
    Mechanism(
        "ring-zero-copy-spin",
        "aipc ring (zero-copy, spin)",
        "ring-zero-copy-spin",
        aipc=True,
        loop=None,
        throughput=True,
        msgs=False,
        capacity=False,
        rtt=False,
        reference="iceoryx2-zero-copy",
        chunks=(MIB,),
        round_every=2,
        tput_scale=ZERO_COPY_SCALE,
        note=f"the zero-copy row with spin_us={RING_SPIN_US} on both ends, as "
        "iceoryx2's in-place row polls: a receiver that catches up with the "
        "sender, and the sender waiting for the acknowledgement, busy-wait "
        "instead of sleeping; the same bytes per repetition as the zero-copy "
        "row; ratio: ÷ iceoryx2 (in place)",
    ),
    Mechanism(
        "raw",
        "os.read/os.write, blocking pipe",
        "raw",
        aipc=False,
        loop="blocking",
        throughput=True,
        msgs=True,
        capacity=True,
        note="the floor: no event loop, blocking syscalls",
    ),
    Mechanism(
        "mp-pipe",
        "multiprocessing.Pipe",
        "mp",
        aipc=False,
        loop="blocking",
        throughput=True,
        msgs=True,
        capacity=False,
        note="send_bytes/recv_bytes on a socketpair (no pipe capacity to raise)",
    ),
    Mechanism(
        "mp-obj",
        "multiprocessing.Pipe objects",
        "mp-obj",
        aipc=False,
        loop="blocking",
        throughput=False,
        msgs=True,
        capacity=False,
        round_every=2,
        divisor=2,
        note="send/recv of the object rows' dict (pickled: 95 bytes)",
    ),
    Mechanism(
        "mp-queue",
        "multiprocessing.Queue",
        "mp-queue",
        aipc=False,
        loop="blocking",
        throughput=False,
        msgs=True,
        capacity=False,
        note="put/get of bytes objects on two spawn-context queues (one each way)",
    ),
    Mechanism(
        "faster-fifo",
        "faster_fifo.Queue",
        "faster-fifo",
        aipc=False,
        loop="blocking",
        throughput=False,
        msgs=True,
        capacity=False,
        requires=("faster_fifo",),
        note="put/get of bytes objects on two queues (one each way) in shared memory",
    ),
    Mechanism(
        "zmq",
        "pyzmq PAIR ipc://",
        "zmq",
        aipc=False,
        loop="blocking",
        throughput=False,
        msgs=True,
        capacity=False,
        requires=("zmq",),
        note="send/recv on a PAIR socket pair (sync API) over a Unix socket",
    ),
    Mechanism(
        "zmq-obj",
        "pyzmq PAIR ipc:// objects",
        "zmq-obj",
        aipc=False,
        loop="blocking",
        throughput=False,
        msgs=True,
        capacity=False,
        requires=("zmq", "msgspec"),
        round_every=2,
        divisor=2,
        note="the object rows' dict encoded with msgspec.msgpack, send/recv "
        "(sync API) on a PAIR socket pair",
    ),
    Mechanism(
        "iceoryx2",
        "iceoryx2 (busy poll)",
        "iceoryx2",
        aipc=False,
        loop="blocking",
        throughput=True,
        msgs=True,
        capacity=False,
        requires=("iceoryx2",),
        chunks=(MIB,),
        round_every=2,
        divisor=2,
        note="iceoryx2's Python bindings, publish-subscribe of u8 slices, one "
        "service each way (loan_slice_uninit, a copy in with memmove, send; "
        "receive, a copy out with string_at; subscribers hold up to 4096 "
        "messages of up to 64 bytes, or 64 of 1 MiB, so that a sender never "
        "waits for room); a receiver polls receive() in a "
        "loop (after 2 ms without a message it sleeps 0.5 ms between polls, so "
        "that an idle peer does not burn a core between rounds)",
    ),
    Mechanism(
        "iceoryx2-blocking",
        "iceoryx2 (blocking)",
        "iceoryx2-blocking",
        aipc=False,
        loop="blocking",
        throughput=True,
        msgs=True,
        capacity=False,
        requires=("iceoryx2",),
        chunks=(MIB,),
        round_every=2,
        divisor=2,
        note="the same, and an event service each way: the sender notifies "
        "after every send, a receiver that finds nothing sleeps in "
        "Listener.blocking_wait()",
    ),
    Mechanism(
        "iceoryx2-zero-copy",
        "iceoryx2 (in place)",
        "iceoryx2-zero-copy",
        aipc=False,
        loop="blocking",
        throughput=True,
        msgs=False,
        capacity=False,
        requires=("iceoryx2",),
        chunks=(MIB,),
        rtt=False,
        round_every=2,
        tput_scale=ZERO_COPY_SCALE,
        note="1 MiB samples written (an 8-byte header) and read (those 8 bytes) "
        f"in place, polling as the busy-poll row; {ZERO_COPY_SCALE} times the "
        "bytes per repetition of the other rows",
    ),
    Mechanism(
        "asyncio-pipe",
        "asyncio pipe streams",
        "asyncio",
        aipc=False,
        loop="asyncio",
        throughput=True,
        msgs=True,
        capacity=True,
        note="loop.connect_read_pipe/connect_write_pipe + StreamReader/StreamWriter",
    ),
    Mechanism(
        "uvloop-pipe",
        "uvloop pipe streams",
        "asyncio",
        aipc=False,
        loop="uvloop",
        throughput=True,
        msgs=True,
        capacity=True,
        requires=("uvloop",),
        note="the same code as the asyncio peer, on a uvloop loop",
    ),
    Mechanism(
        "trio-fdstream",
        "trio FdStream",
        "trio",
        aipc=False,
        loop="trio",
        throughput=True,
        msgs=True,
        capacity=True,
        requires=("trio",),
        note="trio.lowlevel.FdStream receive_some/send_all",
    ),
    Mechanism(
        "anyio-signal",
        "anyio signal receiver",
        "anyio-signal",
        aipc=False,
        loop=None,
        throughput=False,
        msgs=False,
        capacity=False,
        round_every=2,
        note="os.kill + anyio.open_signal_receiver ping-pong (SIGUSR1 to the peer, "
        "SIGUSR2 back), on the backend(s) of the aipc rows",
    ),
    Mechanism(
        "anyio-unix",
        "anyio UNIX stream",
        "anyio-unix",
        aipc=False,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
        round_every=2,
        divisor=2,
        note="anyio.create_unix_listener / anyio.connect_unix, on the backend(s) "
        "of the aipc rows",
    ),
    Mechanism(
        "anyio-seqpacket",
        "anyio UNIX seqpacket",
        "anyio-seqpacket",
        aipc=False,
        loop=None,
        throughput=True,
        msgs=True,
        capacity=False,
        chunks=(64 * KIB,),
        round_every=3,
        divisor=2,
        note="the same with kind=SOCK_SEQPACKET; receive(65536) returns one message",
    ),
    Mechanism(
        "zmq-asyncio",
        "pyzmq PAIR ipc:// objects (zmq.asyncio)",
        "zmq-asyncio",
        aipc=False,
        loop=None,
        throughput=False,
        msgs=True,
        capacity=False,
        backends=("asyncio", "uvloop"),
        requires=("zmq", "msgspec"),
        round_every=2,
        divisor=2,
        note="the pyzmq objects row with zmq.asyncio sockets (await send / await "
        "recv), on asyncio and uvloop (the aipc rows' backends)",
    ),
    Mechanism(
        "filelock",
        "filelock AsyncFileLock hand-off",
        "filelock",
        aipc=False,
        loop="asyncio",
        throughput=False,
        msgs=False,
        capacity=False,
        requires=("filelock",),
        round_every=3,
        divisor=100,
        handoff=True,
        note="the lock hand-off of aipc FileLock with filelock.AsyncFileLock and "
        "its defaults (a waiter polls every 50 ms)",
    ),
)

MECHANISM_KEYS = tuple(m.key for m in MECHANISMS)


@dataclass(frozen=True)
class Placement:
    """Where the two processes run: ``name`` and the CPU of each."""

    name: str
    driver_cpu: int
    peer_cpu: int


@dataclass(frozen=True)
class Config:
    """Iteration counts and transfer sizes of one run.

    Every group runs ``rounds`` blocks per placement; the orchestrator
    interleaves the blocks of all groups, so that a burst of load from other
    processes on the machine falls on every row alike. The counts below are
    per block; a row's numbers are taken over all its blocks.
    """

    rounds: int
    rtt_warmup: int
    rtt_count: int
    tput_bytes: dict[int, int]
    tput_reps: int
    msgs_count: int
    msgs_reps: int
    block_timeout: float
    start_timeout: float

    @classmethod
    def default(cls) -> Config:
        return cls(
            rounds=6,
            rtt_warmup=200,
            rtt_count=1000,
            tput_bytes={64 * KIB: 24 * MIB, MIB: 48 * MIB},
            tput_reps=2,
            msgs_count=4000,
            msgs_reps=2,
            block_timeout=120.0,
            start_timeout=60.0,
        )

    @classmethod
    def quick(cls) -> Config:
        return cls(
            rounds=1,
            rtt_warmup=30,
            rtt_count=200,
            tput_bytes={64 * KIB: 2 * MIB, MIB: 4 * MIB},
            tput_reps=1,
            msgs_count=1000,
            msgs_reps=1,
            block_timeout=30.0,
            start_timeout=30.0,
        )


@dataclass(frozen=True)
class PhaseInfo:
    """What a measured phase means in the table (the orchestrator's view)."""

    id: int
    mechanism: Mechanism
    backend: str
    variant: str  # "" or "capacity"
    placement: str
    metric: str  # "rtt", "tput" or "msgs"
    chunk: int = 0
    round: int = 0
    rounds: int = 1

    def describe(self) -> str:
        if self.metric == "rtt":
            what = "hand-off" if self.mechanism.handoff else "rtt"
        elif self.metric == "msgs":
            what = f"{MSG_SIZE}-byte msgs/s"
        else:
            what = f"{_size(self.chunk)} throughput"
        cap = ", 1 MiB capacity" if self.variant else ""
        text = f"{self.mechanism.label} [{self.backend}{cap}] {what} {self.placement}"
        if self.rounds > 1:
            text += f" (round {self.round + 1}/{self.rounds})"
        return text


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def build_blocks(
    mech: Mechanism,
    backend: str,
    placements: list[Placement],
    config: Config,
    first_id: int,
) -> tuple[list[list[dict[str, Any]]], list[int], list[PhaseInfo]]:
    """The blocks of phases both processes of a group walk, the *slot* of each
    block, and the measured phases. Slot ``k`` is round ``k // len(placements)``
    in placement ``placements[k % len(placements)]``, the same for every group;
    a row with ``round_every`` > 1 has blocks in some slots only."""
    blocks: list[list[dict[str, Any]]] = []
    slots: list[int] = []
    infos: list[PhaseInfo] = []
    for rnd in range(config.rounds):
        if rnd % mech.round_every:
            continue
        for index, pl in enumerate(placements):
            slots.append(rnd * len(placements) + index)
            block: list[dict[str, Any]] = []

            def measured(
                op: dict[str, Any],
                variant: str,
                metric: str,
                chunk: int = 0,
                *,
                block: list[dict[str, Any]] = block,
                place: str = pl.name,
                rnd: int = rnd,
            ) -> None:
                op["id"] = first_id + len(infos)
                block.append(op)
                infos.append(
                    PhaseInfo(
                        op["id"],
                        mech,
                        backend,
                        variant,
                        place,
                        metric,
                        chunk,
                        rnd,
                        config.rounds,
                    )
                )

            def throughput(variant: str) -> None:
                for chunk in mech.chunks:
                    total = config.tput_bytes[chunk] // chunk * chunk * mech.tput_scale
                    op = {
                        "op": "tput",
                        "chunk": chunk,
                        "bytes": total,
                        # a shorter first transfer, not timed, warms up
                        "warmup_bytes": max(chunk, total // 4 // chunk * chunk),
                        "reps": config.tput_reps,
                    }
                    measured(op, variant, "tput", chunk)

            block.append(
                {"op": "pin", "cpus": {"driver": pl.driver_cpu, "peer": pl.peer_cpu}}
            )
            if mech.capacity:
                block.append({"op": "cap", "size": DEFAULT_CAPACITY})
            # Throughput first: asyncio's pipe transport reads 256 KiB at a time,
            # and glibc serves such buffers with mmap until a large free raises
            # its threshold; without this order the asyncio peers' first round
            # trips would run in another allocator state than the later ones.
            if mech.throughput:
                throughput("")
            if mech.msgs:
                n = max(1, config.msgs_count // mech.divisor) * mech.msgs_scale
                msgs = {
                    "op": "msgs",
                    "size": MSG_SIZE,
                    "n": n,
                    "warmup": max(1, n // 4),
                    "reps": config.msgs_reps,
                    "read": MSG_READ,
                }
                measured(msgs, "", "msgs")
            if mech.rtt:
                rtt = {
                    "op": "rtt",
                    "warmup": max(1, config.rtt_warmup // mech.divisor),
                    "n": max(1, config.rtt_count // mech.divisor),
                }
                measured(rtt, "", "rtt")
            if mech.capacity:
                block.append({"op": "cap", "size": RAISED_CAPACITY})
                throughput("capacity")
            blocks.append(block)
    return blocks, slots, infos
