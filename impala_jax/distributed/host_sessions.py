"""Server-side state of remote environment hosts: env-id slots, one session per connection.

SEED RL keeps per-environment state (recurrent state, partial unrolls) on the learner host,
indexed by environment. Here a remote host's environments get a contiguous range of global
environment ids at the inference server (a `SlotAllocator` slot range, so its recurrent state
table rows) and a `HostSession` holds the rest: the `StepRecorder` with its partial unrolls and
episode scores, the expected sequence number, and when the host was last heard from. A session
that ends (stream closed, host evicted after its lease, reconnect) frees its slots and drops its
partial unrolls: a host that comes back starts clean, as its environments do.
"""

import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

from impala_jax import envs
from impala_jax.acting import recorder as recorder_lib
from impala_jax.distributed import env_protocol


class SlotAllocator:
  """Contiguous ranges of `[base, base + capacity)` global environment ids, first fit."""

  def __init__(self, base: int, capacity: int):
    self._base = base
    self._capacity = capacity
    self._taken: Dict[int, int] = {}  # start → size
    self._lock = threading.Lock()

  @property
  def capacity(self) -> int:
    return self._capacity

  def allocate(self, size: int) -> Optional[int]:
    """The first id of a free range of `size` ids, or None when none is free."""
    with self._lock:
      start = self._base
      for taken_start, taken_size in sorted(self._taken.items()):
        if taken_start - start >= size:
          break
        start = taken_start + taken_size
      if start + size > self._base + self._capacity:
        return None
      self._taken[start] = size
      return start

  def free(self, start: int) -> None:
    with self._lock:
      self._taken.pop(start, None)

  def in_use(self) -> int:
    with self._lock:
      return sum(self._taken.values())


class HostSession:
  """One connected host: its hello, slot range, recorder, sequence and liveness."""

  def __init__(self, hello: env_protocol.Hello, peer: str, env_id_offset: int,
               spec: envs.EnvSpec, unroll_length: int, context: Any):
    self.hello = hello
    self.peer = peer
    self.env_id_offset = env_id_offset
    self.recorder = recorder_lib.StepRecorder(hello.num_envs, spec, unroll_length)
    self.next_sequence = 1
    self.context = context
    self.last_seen = time.monotonic()
    self.env_steps = 0

  @property
  def name(self) -> str:
    return f"host {self.hello.session_id.hex()[:8]} ({self.peer}, {self.hello.num_envs} envs)"

  def touch(self) -> None:
    self.last_seen = time.monotonic()


class SessionStats(NamedTuple):
  hosts: int
  remote_envs: int
  remote_env_steps: int
  rejected: int
  evicted: int


class SessionTable:
  """The live sessions by session id, with counters for the run's metrics."""

  def __init__(self):
    self._sessions: Dict[bytes, HostSession] = {}
    self._lock = threading.Lock()
    self.rejected = 0
    self.evicted = 0
    self._finished_env_steps = 0

  def add(self, session: HostSession) -> Optional[HostSession]:
    """Registers `session`; returns the session it replaces (same id: a reconnect), if any."""
    with self._lock:
      previous = self._sessions.get(session.hello.session_id)
      self._sessions[session.hello.session_id] = session
      return previous

  def remove(self, session: HostSession) -> None:
    with self._lock:
      if self._sessions.get(session.hello.session_id) is session:
        del self._sessions[session.hello.session_id]
      self._finished_env_steps += session.env_steps

  def count_rejection(self) -> None:
    with self._lock:
      self.rejected += 1

  def expired(self, lease_seconds: float) -> List[HostSession]:
    """Sessions not heard from for longer than `lease_seconds` (counted as evicted)."""
    now = time.monotonic()
    with self._lock:
      stale = [s for s in self._sessions.values() if now - s.last_seen > lease_seconds]
      self.evicted += len(stale)
    return stale

  def __len__(self) -> int:
    with self._lock:
      return len(self._sessions)

  def stats(self) -> SessionStats:
    with self._lock:
      live = list(self._sessions.values())
      return SessionStats(len(live), sum(s.hello.num_envs for s in live),
                          self._finished_env_steps + sum(s.env_steps for s in live),
                          self.rejected, self.evicted)
