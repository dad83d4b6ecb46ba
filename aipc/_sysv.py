"""What the System V mechanisms share: argument checks, keys, errors (Linux only).

sysv_ipc reports ``EINTR`` as its *base* exception class ("Signaled while
waiting") and every other errno as a subclass or an ``OSError``; the blocking
bridge needs the first told apart.
"""

from __future__ import annotations

import errno

import sysv_ipc

from ._core._args import check_int, check_mode

__all__ = ["check_int", "check_key", "check_mode", "interrupted", "translate_error"]

_KEY_MIN = -(2**31)
_KEY_MAX = 2**31 - 1


def check_key(key: object) -> int:
    key = check_int("key", key)
    if key == sysv_ipc.IPC_PRIVATE or not _KEY_MIN <= key <= _KEY_MAX:
        raise ValueError(
            f"key must be a non-zero 32-bit int (IPC_PRIVATE, 0, cannot be "
            f"attached to: pass key=None for a fresh key), got {key}"
        )
    return key


def translate_error(
    exc: Exception, key: int, what: str, *, creating: bool
) -> Exception:
    """The builtin exception for a sysv_ipc one about ``what`` under ``key``."""
    # ExistentialError is EEXIST when creating (IPC_EXCL), ENOENT when attaching
    if isinstance(exc, sysv_ipc.ExistentialError):
        if creating:
            return FileExistsError(
                errno.EEXIST, f"a SysV {what} with this key exists", str(key)
            )
        return FileNotFoundError(
            errno.ENOENT, f"no SysV {what} with this key", str(key)
        )
    if isinstance(exc, sysv_ipc.PermissionsError):
        return PermissionError(errno.EACCES, "permission denied", str(key))
    return exc


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is sysv_ipc's report of ``EINTR``."""
    return type(exc) is sysv_ipc.Error
