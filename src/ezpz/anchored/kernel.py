"""openat2 and renameat2, through libc's ``syscall`` (ctypes)."""

from __future__ import annotations

import ctypes
import errno
import os
import platform

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _syscall_openat2() -> int | None:
    """The openat2 system call number on this machine, or None (use the component walk)."""
    machine = platform.machine().lower()
    if machine.startswith(("x86_64", "amd64", "aarch64", "arm", "i386", "i686", "ppc",
                           "s390", "riscv", "loongarch")):
        return 437  # the unified system call table (Linux 5.1+)
    return None


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Kernel:
    """openat2 and renameat2 through libc's ``syscall``; ``openat2`` is None where the
    kernel, libc or a seccomp filter does not offer it."""

    def __init__(self) -> None:
        self.openat2: bool = False
        self._nr = _syscall_openat2()
        self._libc: ctypes.CDLL | None = None
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = self._libc.syscall
            self._syscall.restype = ctypes.c_long
        except (OSError, AttributeError):  # pragma: no cover - no libc (not Linux)
            self._libc = None
            return
        if self._nr is not None and os.environ.get("EZPZ_OPENAT2", "1") != "0":
            self.openat2 = self._probe()

    def _probe(self) -> bool:
        try:
            fd = self.call_openat2(os.open("/", _DIR_READ), ".", os.O_PATH | os.O_CLOEXEC, 0,
                                   close_dirfd=True)
        except OSError:
            return False
        os.close(fd)
        return True

    def call_openat2(self, dirfd: int, path: str, flags: int, mode: int,
                     close_dirfd: bool = False) -> int:
        how = _OpenHow(flags, mode, _RESOLVE)
        assert self._nr is not None
        try:
            fd = self._syscall(ctypes.c_long(self._nr), ctypes.c_int(dirfd),
                               ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                               ctypes.c_size_t(ctypes.sizeof(how)))
            err = ctypes.get_errno()
        finally:
            if close_dirfd:
                os.close(dirfd)
        if fd < 0:
            raise OSError(err, os.strerror(err), path)
        return int(fd)

    def exchange(self, src_dir: int, src: str, dst_dir: int, dst: str) -> bool:
        """renameat2(RENAME_EXCHANGE); False where the kernel or filesystem cannot."""
        return self.rename2(src_dir, src, dst_dir, dst, _RENAME_EXCHANGE)

    def rename_noreplace(self, src_dir: int, src: str, dst_dir: int, dst: str) -> bool:
        """renameat2(RENAME_NOREPLACE); False where the kernel or filesystem cannot, or
        when ``dst`` exists (nothing changed then: the caller decides)."""
        return self.rename2(src_dir, src, dst_dir, dst, _RENAME_NOREPLACE)

    def rename2(self, src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> bool:
        if self._libc is None:  # pragma: no cover
            return False
        try:
            fn = self._libc.renameat2
        except AttributeError:  # pragma: no cover - libc without renameat2
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
        if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        if err == errno.EEXIST and flags == _RENAME_NOREPLACE:
            return False
        raise OSError(err, os.strerror(err), dst)


KERNEL = _Kernel()


