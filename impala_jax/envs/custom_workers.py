"""The worker processes of `envs.custom.CustomEnvPool` (`num_workers >= 1`), seen from the pool.

Each worker is a fresh interpreter running `custom_copies.worker_process`: it owns a block of
copies, steps them on command, and writes their results into a memory-mapped file it shares
with the pool (`shared_file`). The socket between them carries only commands and env ids, as
Python objects between this process and its own child; nothing arrives from a network.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from multiprocessing import connection
from typing import Any

from impala_jax.envs import custom_copies

# How long a wait for a worker's answer goes between checks that the worker is still alive.
_POLL_SECONDS = 1.0
_CLOSE_SECONDS = 10.0


# A worker process loads the `custom_copies` package by its path, as a package of its own:
# importing it through `impala_jax` would import all of impala_jax, and JAX with it. Its
# modules import each other by relative names, found through the package's `__path__` once it
# is in `sys.modules`. It first puts the pool's sys.path in front, so it finds the factory's
# module where the pool did.
_WORKER_CODE = """
import importlib.util, json, os, sys
sys.path[:0] = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location(
    "_impala_jax_custom_copies", sys.argv[2],
    submodule_search_locations=[os.path.dirname(sys.argv[2])])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module.worker_process(int(sys.argv[3]))
"""


class WorkerProcess:
  """One worker process (`custom_copies.worker_process`) and its socket; answers in order."""

  def __init__(self, index: int, init: dict):
    self.index = index
    self.env_ids = range(*init["env_ids"])
    parent, child = socket.socketpair()
    try:
      self.process = subprocess.Popen(
          [sys.executable, "-c", _WORKER_CODE, json.dumps(sys.path), custom_copies.__file__,
           str(child.fileno())], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
    except BaseException:
      parent.close()
      raise
    finally:
      child.close()
    self.conn = connection.Connection(parent.detach())
    try:
      self.conn.send(init)
    except (OSError, EOFError) as e:
      raise self._died() from e

  @property
  def name(self) -> str:
    return (f"Environment worker {self.index} (pid {self.process.pid}, copies "
            f"{self.env_ids.start}-{self.env_ids.stop - 1})")

  def send(self, command: str, argument: Any = None) -> None:
    try:
      self.conn.send((command, argument))
    except (OSError, EOFError) as e:
      raise self._died() from e

  def wait(self) -> Any:
    """The answer to the oldest unanswered command; raises the worker's error, if any."""
    while not self.conn.poll(_POLL_SECONDS):
      if self.process.poll() is not None:
        raise self._died()
    try:
      status, value = self.conn.recv()
    except (OSError, EOFError) as e:
      raise self._died() from e
    if status == "error":
      raise RuntimeError(f"{self.name} failed:\n{value}")
    return value

  def _died(self) -> RuntimeError:
    try:
      code = self.process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
      code = None
    return RuntimeError(f"{self.name} died (exit code {code}).")

  def close(self) -> None:
    try:
      if self.process.poll() is None:
        self.conn.send(("close", None))
        if self.conn.poll(_CLOSE_SECONDS):
          self.conn.recv()
    except (OSError, EOFError):
      pass
    self.conn.close()  # EOF: a worker that missed "close" exits too.
    try:
      self.process.wait(timeout=_CLOSE_SECONDS)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


def shared_file(nbytes: int) -> str:
  directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
  handle, path = tempfile.mkstemp(prefix="impala_jax_envs_", dir=directory)
  try:
    os.ftruncate(handle, max(1, nbytes))
  finally:
    os.close(handle)
  return path
