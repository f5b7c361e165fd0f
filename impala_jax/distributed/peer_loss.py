"""A dead process of a `jax.distributed` group ends the others with a named error and status 1.

Left to itself, JAX ends every surviving process by aborting (SIGABRT, exit status 134, a C++
stack trace): its coordination service reports a process that stopped sending heartbeats
(within `heartbeat_timeout_seconds`), or a process loses the service itself (process 0), and
JAX's client in every other process then calls a fatal log. Python cannot be given that
report (the client's callback for it fails to convert its status in this jaxlib), so:

  * `AbortAsPeerLost` turns that SIGABRT into `PeerLostError` on stderr and status 1 (the
    line JAX logs just before names the lost process);
  * a collective that fails because its peer closed the connection (gloo's "Connection
    closed/reset by peer", often the first sign) raises `PeerLostError` in the learner
    (`as_peer_lost`), which the training script reports the same way.

Exits skip Python's clean-up (`os._exit`): a survivor cannot take part in the group's
collectives any more, and JAX's own shutdown would wait for them. Recover from the last
checkpoint, every process with `--resume`.
"""

import ctypes
import os
import signal
import sys
from typing import Optional

EXIT_CODE = 1
# What gloo says when the process at the other end of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Connection refused")


class PeerLostError(RuntimeError):
  """A process of the group is gone; every other one stops (restart all with --resume)."""


def _die(message: str) -> None:
  """Prints `PeerLostError: message` and exits now, with status 1, from any thread."""
  text = (f"\nerror: PeerLostError: {message}. Every process of the group stops; restart "
          "them all with --resume.\n")
  os.write(2, text.encode())
  os._exit(EXIT_CODE)  # pylint: disable=protected-access


def as_peer_lost(error: BaseException) -> Optional[PeerLostError]:
  """`error` as a `PeerLostError` if it is a collective's peer closing on it, else None."""
  text = str(error)
  if any(marker in text for marker in _PEER_GONE):
    return PeerLostError(f"a collective failed because a process of the group is gone "
                         f"({text.splitlines()[0][:300]})")
  return None


class AbortAsPeerLost:
  """While entered, a SIGABRT (JAX's client ending the process because a process of the
  group, or its coordination service, is gone) exits with status 1 and `PeerLostError`
  instead of a core dump.

  The handler runs Python in a signal handler (through ctypes) in the aborting C++ thread; that
  is safe enough only because it does nothing but write to stderr and `os._exit`. Any other
  abort in the group's lifetime gets the same message: the lines above it tell them apart.
  `__exit__` restores the default.
  """

  def __init__(self, coordinator_address: str):
    self._coordinator = coordinator_address
    self._handler = None  # Kept alive while installed: the C library holds a pointer to it.
    self._libc = ctypes.CDLL(None)
    self._libc.signal.restype = ctypes.c_void_p
    self._libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]

  def _on_abort(self, signum: int) -> None:
    del signum
    _die("JAX's distributed client ended this process: a process of the group stopped "
         f"sending heartbeats, or the coordination service at {self._coordinator} (process "
         "0) is gone (JAX's fatal log line above says which)")

  def __enter__(self) -> "AbortAsPeerLost":
    if sys.platform.startswith("linux"):  # ctypes' signal() as glibc has it.
      self._handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(self._on_abort)
      self._libc.signal(signal.SIGABRT, ctypes.cast(self._handler, ctypes.c_void_p))
    return self

  def __exit__(self, *exc) -> None:
    if self._handler is not None:
      self._libc.signal(signal.SIGABRT, None)  # SIG_DFL.
      self._handler = None
