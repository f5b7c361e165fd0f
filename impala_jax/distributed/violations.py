"""Value violations counted per host, and the hosts evicted for repeating them.

Shared by the env host server (`host_sessions`) and the learner's side of the Redis store
(`store_learner`). A host is named by the id it sends (an env host's HELLO, an actor host's
blobs), which is its own word: the table is bounded (the least recently counted are forgotten),
and eviction stops a faulty host, not one that lies about who it is (docs/distributed.md,
"Trust").
"""

import collections
import threading
from typing import Hashable

# Hosts remembered at most.
MAX_HOSTS = 4096


class Violations:
  """How many messages each host sent with bad values; evicted once at `to_evict` (thread-safe).

  Attributes:
    total: violations counted, over all hosts.
    evicted: hosts evicted.
  """

  def __init__(self, to_evict: int):
    self._to_evict = to_evict
    self._counts: "collections.OrderedDict[Hashable, int]" = collections.OrderedDict()
    self._lock = threading.Lock()
    self.total = 0
    self.evicted = 0

  @property
  def to_evict(self) -> int:
    return self._to_evict

  def count(self, host: Hashable) -> bool:
    """Counts one violation of `host`; True once it is evicted (from this one on)."""
    with self._lock:
      self.total += 1
      count = self._counts.pop(host, 0) + 1
      self._counts[host] = count  # Now the most recently counted.
      while len(self._counts) > MAX_HOSTS:
        self._counts.popitem(last=False)
      if count == self._to_evict:
        self.evicted += 1
      return count >= self._to_evict

  def is_evicted(self, host: Hashable) -> bool:
    with self._lock:
      return self._counts.get(host, 0) >= self._to_evict
