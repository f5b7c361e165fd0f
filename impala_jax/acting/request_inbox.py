"""The inference server's inbox: requests from many actor threads, with few thread wake-ups.

Waking a sleeping thread costs tens of microseconds of CPU on a virtualised host (about 25 µs
each way on the 2-core development machine: a lock ping-pong between two Python threads took
57 µs of CPU per round trip), as much as a whole agent step of EnvPool. A plain queue wakes the
server at every request that finds it waiting, several times per batch. Here an actor wakes
the server only when it has something to do: the first request into an empty inbox, and the
one that completes the batch it is waiting for. Between those, requests pile up unannounced.
"""

import collections
import math
import threading
from typing import Callable, Deque, Generic, List, Optional, TypeVar

Item = TypeVar("Item")


class RequestInbox(Generic[Item]):
  """A FIFO of requests that one reader (the server) takes in batches; thread-safe."""

  def __init__(self):
    self._lock = threading.Lock()  # Guards everything below.
    self._items: Deque[Item] = collections.deque()
    # A raw lock used as a one-slot signal: released when the reader should look.
    self._signal = threading.Lock()
    self._signal.acquire()
    self._signalled = False
    self._wake_at = 1  # The number of items at which a writer wakes the reader.

  def put(self, item: Item) -> None:
    with self._lock:
      self._items.append(item)
      if not self._signalled and len(self._items) >= self._wake_at:
        self._signalled = True
        self._signal.release()

  def take(self, first_timeout: float, window: float, enough: Optional[int], max_size: int,
           size_of: Callable[[Item], int]) -> List[Item]:
    """The next batch: items from the front whose sizes sum to at most `max_size` (at least one).

    Waits up to `first_timeout` for a first item (returns [] without one), then up to `window`
    for `enough` items in all (None: the whole window). Items that do not fit stay, first in
    line for the next call.
    """
    with self._lock:
      self._wake_at = 1
      empty = not self._items
    self._wait_for_signal(first_timeout if empty else 0.0)
    with self._lock:
      if not self._items:
        return []
      need = math.inf if enough is None else enough
      wait = len(self._items) < need
      if wait:
        self._wake_at = need
    if wait:
      self._wait_for_signal(window)
    with self._lock:
      self._wake_at = 1
      batch, size = [], 0
      while self._items and (not batch or size + size_of(self._items[0]) <= max_size):
        batch.append(self._items.popleft())
        size += size_of(batch[-1])
      return batch

  def drain(self) -> List[Item]:
    """Every item left, oldest first (for failing them when the reader stops)."""
    with self._lock:
      items = list(self._items)
      self._items.clear()
      return items

  def _wait_for_signal(self, timeout: float) -> None:
    """Blocks until a writer signals or `timeout` passes; leaves no signal pending."""
    got = self._signal.acquire(timeout=timeout) if timeout > 0 else self._signal.acquire(False)
    with self._lock:
      if not got and self._signalled:
        self._signal.acquire()  # Given after the wait ended, before this lock: take it now.
      self._signalled = False
