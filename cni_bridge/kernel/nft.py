"""Runs nftables scripts: libnftables in-process through ctypes (sub-millisecond) when the shared
library is there, else the `nft` executable with the same script. Where neither exists,
nftables is unavailable (`available()` is False; STATUS says so with code 50)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading

from cni_bridge.errors import NOT_AVAILABLE, PluginError

_OUTPUT_HANDLE = 1 << 3  # NFT_CTX_OUTPUT_HANDLE
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON


class NftError(Exception):
    pass


class _Nft:
    """Runs nft scripts: libnftables via ctypes when available, else `nft -f -`."""

    def __init__(self) -> None:
        self._lib = None
        # A pool, not thread-locals: the daemon runs each request in a new thread, and a context
        # per thread would leak one libnftables context (and its ruleset cache) per request.
        self._pool: list[int] = []
        self._pool_lock = threading.Lock()
        try:
            lib = ctypes.CDLL("libnftables.so.1")
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
            lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            self._lib = lib
        except OSError:
            self._lib = None

    def available(self) -> bool:
        return self._lib is not None or shutil.which("nft") is not None

    def _ctx(self) -> int:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        ctx = self._lib.nft_ctx_new(0)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return ctx

    def _release(self, ctx: int) -> None:
        with self._pool_lock:
            self._pool.append(ctx)

    def run(self, script: str, *, handles: bool = False, json: bool = False) -> str:
        """`handles`: print rule handles (`nft -a`); `json`: JSON output (`nft -j`)."""
        if self._lib is not None:
            ctx = self._ctx()
            try:
                flags = self._lib.nft_ctx_output_get_flags(ctx)
                flags = flags | _OUTPUT_HANDLE if handles else flags & ~_OUTPUT_HANDLE
                self._lib.nft_ctx_output_set_flags(ctx, flags | _OUTPUT_JSON if json else flags & ~_OUTPUT_JSON)
                rc = self._lib.nft_run_cmd_from_buffer(ctx, script.encode())
                out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
                err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
            finally:
                self._release(ctx)
            if rc != 0:
                raise NftError(err.strip() or f"nft failed (rc {rc})")
            return out
        nft = shutil.which("nft")
        if nft is None:
            raise PluginError(NOT_AVAILABLE, "nftables is not available (no libnftables and no nft executable)")
        proc = subprocess.run([nft, *(["-a"] if handles else []), *(["-j"] if json else []), "-f", "-"], input=script, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NftError(proc.stderr.strip() or f"nft failed (rc {proc.returncode})")
        return proc.stdout

    def forget_pool(self) -> None:
        """In a forked child: the pooled contexts' netlink sockets are shared with the parent."""
        self._pool = []
        self._pool_lock = threading.Lock()


nft = _Nft()
# A forked child (gunicorn workers of a preloaded app) must not share pooled contexts with its
# parent: replies would go to whichever process reads first.
os.register_at_fork(after_in_child=nft.forget_pool)
