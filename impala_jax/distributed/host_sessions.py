"""Server-side state of remote environment hosts: env-id slots, one session per connection.

SEED RL keeps per-environment state (recurrent state, partial unrolls) on the learner host,
indexed by environment. Here a remote host's environments get a contiguous range of global
environment ids at the inference server (a `SlotAllocator` slot range, so its recurrent state
table rows) and a `HostSession` holds the rest: the `StepRecorder` with its partial unrolls and
episode scores, the expected sequence number, and when the host was last heard from. A session
that ends (stream closed, host evicted after its lease, a rejected message) frees its slots and
drops its partial unrolls: a host that comes back starts clean, as its environments do.

The `SessionTable` also keeps what outlives a session: each host's value violations (by its
host id, the same across its reconnects: `violations`) and the streams that have not said
HELLO yet (each must within a deadline; a few at a time per address).
"""

import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional

from impala_jax import envs
from impala_jax.acting import recorder as recorder_lib
from impala_jax.distributed import env_protocol
from impala_jax.distributed import violations as violations_lib

# Streams from one address that may be waiting for their HELLO at once.
MAX_PENDING_PER_ADDRESS = 4


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
  def source(self) -> str:
    """The host, as its episodes are attributed (`types.EpisodeStats.source`)."""
    return host_name(self.hello.host_id)

  @property
  def name(self) -> str:
    return (f"{self.source} (session {self.hello.session_id.hex()[:8]}, {self.peer}, "
            f"{self.hello.num_envs} envs)")

  def touch(self) -> None:
    self.last_seen = time.monotonic()


def host_name(host_id: bytes) -> str:
  return f"env host {host_id.hex()[:8]}"


def address_of(peer: str) -> str:
  """A gRPC peer ("ipv4:10.0.0.5:41234") without its port: the connecting machine."""
  return peer.rsplit(":", 1)[0]


class SessionStats(NamedTuple):
  hosts: int
  remote_envs: int
  remote_env_steps: int
  rejected: int
  value_violations: int
  evicted: int


class SessionTable:
  """The live sessions by session id, the hosts' violations, the streams before HELLO, and
  counters for the run's metrics (thread-safe)."""

  def __init__(self, violations_to_evict: int = 3):
    self._sessions: Dict[bytes, HostSession] = {}
    self.violations = violations_lib.Violations(violations_to_evict)
    self._pending: Dict[int, tuple] = {}  # id(context) → (context, address, since)
    self._lock = threading.Lock()
    self.rejected = 0
    self._lease_evictions = 0
    self._finished_env_steps = 0

  # -- live sessions ----------------------------------------------------------------------------

  def add(self, session: HostSession) -> Optional[HostSession]:
    """Registers `session`; returns the live session that holds its id already (then nothing
    is registered: a session id cannot take over another connection's session)."""
    with self._lock:
      holder = self._sessions.get(session.hello.session_id)
      if holder is None:
        self._sessions[session.hello.session_id] = session
      return holder

  def remove(self, session: HostSession) -> None:
    with self._lock:
      if self._sessions.get(session.hello.session_id) is session:
        del self._sessions[session.hello.session_id]
        self._finished_env_steps += session.env_steps

  def sessions(self) -> List[HostSession]:
    with self._lock:
      return list(self._sessions.values())

  def expired(self, lease_seconds: float) -> List[HostSession]:
    """Sessions not heard from for longer than `lease_seconds` (counted as evicted)."""
    now = time.monotonic()
    with self._lock:
      stale = [s for s in self._sessions.values() if now - s.last_seen > lease_seconds]
      self._lease_evictions += len(stale)
    return stale

  def __len__(self) -> int:
    with self._lock:
      return len(self._sessions)

  # -- violations -------------------------------------------------------------------------------

  def count_rejection(self) -> None:
    with self._lock:
      self.rejected += 1

  def count_violation(self, host_id: bytes) -> bool:
    """Counts a value violation against `host_id`; True when that evicts it."""
    return self.violations.count(host_id)

  def is_evicted(self, host_id: bytes) -> bool:
    return self.violations.is_evicted(host_id)

  # -- streams before HELLO ---------------------------------------------------------------------

  def add_pending(self, context: Any, peer: str) -> bool:
    """Notes a stream waiting for its HELLO; False if its address has too many already."""
    address = address_of(peer)
    with self._lock:
      waiting = sum(1 for _, a, _ in self._pending.values() if a == address)
      if waiting >= MAX_PENDING_PER_ADDRESS:
        return False
      self._pending[id(context)] = (context, address, time.monotonic())
      return True

  def remove_pending(self, context: Any) -> None:
    with self._lock:
      self._pending.pop(id(context), None)

  def pending_longer_than(self, seconds: float) -> List[Any]:
    """The contexts of streams that have waited longer than `seconds` for their HELLO."""
    now = time.monotonic()
    with self._lock:
      return [c for c, _, since in self._pending.values() if now - since > seconds]

  def stats(self) -> SessionStats:
    with self._lock:
      live = list(self._sessions.values())
      return SessionStats(len(live), sum(s.hello.num_envs for s in live),
                          self._finished_env_steps + sum(s.env_steps for s in live),
                          self.rejected, self.violations.total,
                          self._lease_evictions + self.violations.evicted)
