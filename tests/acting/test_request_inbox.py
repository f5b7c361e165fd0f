"""Tests for acting/request_inbox.py: the inference server's batches of requests."""

import threading
import time

from impala_jax.acting import request_inbox

SIZE = len  # Items are lists: their size is their length.


def test_a_batch_closes_as_soon_as_the_expected_requests_are_in():
  inbox = request_inbox.RequestInbox()
  inbox.put([1])

  def late_writers():
    time.sleep(0.05)
    inbox.put([2])
    inbox.put([3])

  threading.Thread(target=late_writers).start()
  start = time.monotonic()
  batch = inbox.take(first_timeout=1.0, window=5.0, enough=3, max_size=10, size_of=SIZE)
  assert batch == [[1], [2], [3]]
  assert time.monotonic() - start < 2.0  # Not the 5 s window: the third request closed it.


def test_without_the_expected_requests_the_window_closes_the_batch():
  inbox = request_inbox.RequestInbox()
  inbox.put([1])
  start = time.monotonic()
  assert inbox.take(first_timeout=1.0, window=0.2, enough=3, max_size=10,
                    size_of=SIZE) == [[1]]
  assert 0.15 < time.monotonic() - start < 2.0


def test_an_empty_inbox_returns_nothing_after_the_first_timeout():
  inbox = request_inbox.RequestInbox()
  start = time.monotonic()
  assert inbox.take(first_timeout=0.1, window=5.0, enough=1, max_size=10, size_of=SIZE) == []
  assert time.monotonic() - start < 1.0


def test_requests_that_do_not_fit_stay_first_in_line():
  inbox = request_inbox.RequestInbox()
  for item in ([1, 1, 1], [2, 2], [3, 3, 3], [4]):
    inbox.put(item)
  assert inbox.take(0.1, 0.0, 1, max_size=6, size_of=SIZE) == [[1, 1, 1], [2, 2]]
  assert inbox.take(0.1, 0.0, 1, max_size=6, size_of=SIZE) == [[3, 3, 3], [4]]
  # One request larger than the limit still goes alone rather than blocking the line.
  inbox.put([5] * 9)
  assert inbox.take(0.1, 0.0, 1, max_size=6, size_of=SIZE) == [[5] * 9]


def test_a_writer_that_arrives_while_the_reader_serves_is_seen_at_once():
  inbox = request_inbox.RequestInbox()
  inbox.put([1])
  assert inbox.take(0.1, 0.0, 1, 10, SIZE) == [[1]]
  inbox.put([2])  # Signals an idle reader: the next take must not wait for the first one.
  start = time.monotonic()
  assert inbox.take(5.0, 0.0, 1, 10, SIZE) == [[2]]
  assert time.monotonic() - start < 1.0
  assert inbox.take(0.1, 0.0, 1, 10, SIZE) == []  # No signal left behind.


def test_many_writers_lose_nothing_and_drain_returns_what_is_left():
  inbox = request_inbox.RequestInbox()
  writers = [threading.Thread(target=lambda w=w: [inbox.put([w, i]) for i in range(200)])
             for w in range(4)]
  for writer in writers:
    writer.start()
  taken = []
  while len(taken) < 600:
    taken += inbox.take(1.0, 0.001, 4, max_size=8, size_of=SIZE)
  for writer in writers:
    writer.join()
  left = inbox.drain()
  assert sorted(map(tuple, taken + left)) == sorted((w, i) for w in range(4) for i in range(200))
  for w in range(4):  # Each writer's requests stay in its order.
    mine = [i for writer, i in taken + left if writer == w]
    assert mine == sorted(mine)
  assert inbox.drain() == []
