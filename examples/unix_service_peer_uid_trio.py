"""The service of unix_service_peer_uid.py, unchanged, on trio.

aipc's sockets are anyio streams, so the same code runs on asyncio, uvloop
and trio: only the line that starts the event loop differs.

Run: python examples/unix_service_peer_uid_trio.py
"""

from __future__ import annotations

import trio
from unix_service_peer_uid import main  # the script's own directory is on sys.path

if __name__ == "__main__":
    trio.run(main)
