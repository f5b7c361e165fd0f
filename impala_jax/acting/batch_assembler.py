"""The queue between acting and learning: complete unrolls in reused, preallocated batches.

    actors' / env hosts' UnrollBuffers ─put_unrolls (copy)─▶ the batch being filled
                   │                                              │ full
                   └───────put_block (a whole block, no copy)─────┤
                                                                  ▼
                      learner ◀──get── queue of ready batches ──release──▶ reuse

Writers hand over complete unrolls as columns of their own time-major storage
(`UnrollBuffer.hand_over`). A block that is exactly one batch, every column complete (an actor
whose environments step together), becomes a batch as it is: `put_block` queues it and gives
the writer a free buffer in exchange. Otherwise `put_unrolls` copies the columns, one copy per
field for all of them at once, into the next free columns of a batch buffer. Batches are
time-major, `[T+1, B, ...]`, the learner's own layout: never stacked, transposed or allocated
again. The learner takes a batch (`get`) and hands the buffer back (`HostBatch.release`) once
its update no longer reads it. Until then no writer can touch it: a buffer is written only
while it is a writer's block or is being filled, never while it is queued or the learner's.

Buffers are allocated on demand up to `capacity + reader_buffers` and 64-byte aligned, so
that XLA's CPU client uses them in place, without a copy. When every buffer is in use (the
learner is behind), writers block, re-checking their stop condition every 0.1 s: that is the
backpressure that keeps the data fresh. With `capacity` 1, a batch waits behind at most the
one the learner holds (two on an accelerator, where the next is sent ahead during an update),
as with a queue of one batch in front of a learner.
"""

import queue
import threading
from typing import Callable, List, Optional, Sequence

import jax
import numpy as np

from impala_jax import types
from impala_jax.acting import unroll_buffer

_POLL_SECONDS = 0.1


def stack_unrolls(unrolls: Sequence[types.Unroll]) -> types.Unroll:
  """Unrolls with leaves `[T+1, b_i, ...]` (core state `[b_i, ...]`), e.g. single ones as they
  cross a trajectory store, → one batch with leaves `[T+1, Σb_i, ...]`, in one copy."""
  if not unrolls:
    raise ValueError("stack_unrolls needs at least one unroll.")
  fields = {f: np.concatenate([getattr(u, f) for u in unrolls], axis=1)
            for f in types.Unroll._fields if f != "core_state"}
  core_state = jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=0),
                            *[u.core_state for u in unrolls])
  return types.Unroll(**fields, core_state=core_state)


def _resized(like: types.Unroll, num_unrolls: int) -> types.Unroll:
  """Zeroed, aligned storage laid out like `like` (time-major) for `num_unrolls` unrolls."""
  field = lambda x: unroll_buffer.aligned_zeros((x.shape[0], num_unrolls) + x.shape[2:],
                                                x.dtype)
  state = lambda x: unroll_buffer.aligned_zeros((num_unrolls,) + x.shape[1:], x.dtype)
  return types.Unroll(*(field(x) for x in like[:-1]),
                      core_state=jax.tree.map(state, like.core_state))


def _copy_unrolls(source: types.Unroll, columns: np.ndarray, destination: types.Unroll,
                  start: int) -> None:
  """Copies unrolls `columns` of `source` into columns `start`, `start + 1`, ... of
  `destination` (time-major fields: axis 1; core state: axis 0)."""
  count = len(columns)
  # Consecutive columns (an actor's environments in order) copy as one slice, not gathered.
  if columns[-1] - columns[0] == count - 1 and (np.diff(columns) == 1).all():
    columns = slice(int(columns[0]), int(columns[0]) + count)
  for to, frm in zip(destination[:-1], source[:-1]):
    to[:, start:start + count] = frm[:, columns]
  for to, frm in zip(jax.tree.leaves(destination.core_state),
                     jax.tree.leaves(source.core_state)):
    to[start:start + count] = frm[columns]


class _Release:
  """Hands one buffer back, once: a second call is a bug that would let two batches share it."""

  def __init__(self, assembler: "BatchAssembler", buffer: types.Unroll):
    self._assembler = assembler
    self._buffer = buffer

  def __call__(self) -> None:
    buffer, self._buffer = self._buffer, None
    if buffer is None:
      raise RuntimeError("A batch buffer was released twice.")
    self._assembler._give_back(buffer)  # pylint: disable=protected-access


class BatchAssembler:
  """Fills batch buffers of `batch_size` unrolls from the rows writers hand over (thread-safe).

  Args:
    batch_size: B, unrolls per batch.
    capacity: batches held here (the one being filled and those ready) before writers block.
    reader_buffers: batches the reader may hold at once (the learner: the one its update reads
      and the one it transfers ahead).
  """

  def __init__(self, batch_size: int, capacity: int, reader_buffers: int = 2):
    if batch_size < 1 or capacity < 1 or reader_buffers < 1:
      raise ValueError(f"batch_size, capacity and reader_buffers must be >= 1; got "
                       f"{batch_size}, {capacity}, {reader_buffers}.")
    self.batch_size = batch_size
    self._max_buffers = capacity + reader_buffers
    # Never full: it can hold every buffer there is. Writers wait for buffers instead.
    self._ready: "queue.Queue[types.HostBatch]" = queue.Queue(maxsize=self._max_buffers)
    self._lock = threading.Lock()  # Guards everything below.
    self._buffer_free = threading.Condition(self._lock)
    self._free: List[types.Unroll] = []
    self._allocated = 0
    self._filling: Optional[types.Unroll] = None
    self._filled = 0

  # -- writers ----------------------------------------------------------------------------------

  def put_unrolls(self, block: types.Unroll, columns: np.ndarray,
                  stop_requested: Callable[[], bool]) -> bool:
    """Copies the unrolls in `columns` of `block` (leaves `[T+1, num_envs, ...]`) into
    batches (see `unroll_buffer.UnrollSink`); False if stopped while waiting for a buffer."""
    done = 0
    while done < len(columns):
      with self._lock:
        if self._filling is None:
          self._filling = self._take_buffer(block, stop_requested)
          if self._filling is None:
            return False
          self._filled = 0
        count = min(len(columns) - done, self.batch_size - self._filled)
        _copy_unrolls(block, columns[done:done + count], self._filling, self._filled)
        self._filled += count
        done += count
        full = None
        if self._filled == self.batch_size:
          full, self._filling, self._filled = self._filling, None, 0
      if full is not None and not self._queue_ready(full, stop_requested):
        self._give_back(full)
        return False
    return True

  def accepts_block(self, block: types.Unroll) -> bool:
    """Blocks of exactly one batch are taken whole (`put_block`)."""
    return block.reward.shape[1] == self.batch_size

  def put_block(self, block: types.Unroll,
                stop_requested: Callable[[], bool]) -> Optional[types.Unroll]:
    """Queues `block` (leaves `[T+1, B, ...]`, every unroll complete) as a batch as it is, and
    returns a free buffer of its layout for the writer to continue in (see
    `unroll_buffer.UnrollSink`); None if stopped while waiting for one."""
    with self._lock:
      fresh = self._take_buffer(block, stop_requested)
    if fresh is None:
      return None
    if not self._queue_ready(block, stop_requested):
      self._give_back(fresh)  # `block` stays the writer's.
      return None
    return fresh

  def _take_buffer(self, like: types.Unroll,
                   stop_requested: Callable[[], bool]) -> Optional[types.Unroll]:
    """A free buffer laid out like `like` for B unrolls, waiting for one if all are in use
    (called with the lock held)."""
    while True:
      if self._free:
        return self._free.pop()
      if self._allocated < self._max_buffers:
        self._allocated += 1
        return _resized(like, self.batch_size)
      if stop_requested():
        return None
      self._buffer_free.wait(_POLL_SECONDS)

  def _queue_ready(self, buffer: types.Unroll, stop_requested: Callable[[], bool]) -> bool:
    """Queues a full buffer for the reader (the queue has room for every buffer there is, so
    this waits only if a writer holds more than one); False if stopped first."""
    batch = types.HostBatch(buffer, _Release(self, buffer))
    while not stop_requested():
      try:
        self._ready.put(batch, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  def _give_back(self, buffer: types.Unroll) -> None:
    with self._lock:
      self._free.append(buffer)
      self._buffer_free.notify()

  # -- the reader -------------------------------------------------------------------------------

  def get(self, timeout: float) -> Optional[types.HostBatch]:
    """The next full batch, or None after `timeout` seconds without one."""
    try:
      return self._ready.get(timeout=timeout)
    except queue.Empty:
      return None

  def queued_unrolls(self) -> int:
    """Unrolls waiting for the learner: in ready batches and in the batch being filled."""
    return self._ready.qsize() * self.batch_size + self._filled

  @property
  def buffers_allocated(self) -> int:
    return self._allocated
