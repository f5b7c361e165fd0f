"""The lifetime of one background thread: the base of every thread owner in the package.

The actors, the inference server and the hosts' pushers, pollers and watchdogs all derive from
`Worker`, so this module sits on the package's ground floor and imports none of it.

A `Worker` owns exactly one daemon thread: `start()` launches it, `close()` asks it to stop
(`self._stop` is set; the loop must re-check it at least every ~0.1 s) and joins it. An
exception that ends the thread is kept in `error` for the owner to re-raise in its own thread
(`raise_if_failed`).
"""

import threading
from typing import Iterable, Optional

from absl import logging

# How long `close()` waits for the thread. A loop that re-checks `_stop` every 0.1 s ends in
# well under a second; one that does not is a bug, reported rather than waited on forever.
JOIN_TIMEOUT_SECONDS = 30.0


class Worker:
  """Base class: subclasses implement `_run()`, a loop that returns once `_stop` is set."""

  def __init__(self, name: str, description: Optional[str] = None):
    """Args:
      name: the thread's name.
      description: how errors name this thread, e.g. "Actor thread actor-0".
    """
    self._stop = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._main, name=name, daemon=True)
    self.description = description or f"Thread {name}"

  def _run(self) -> None:
    raise NotImplementedError

  def _on_error(self, error: BaseException) -> None:
    """Called in the worker thread when `_run` raised (before the thread ends)."""

  def _main(self) -> None:
    try:
      self._run()
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e
      self._on_error(e)

  def start(self):
    self._thread.start()
    return self

  def request_stop(self) -> None:
    """Asks the thread to stop without waiting (stop many workers, then `close` each)."""
    self._stop.set()

  def close(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(JOIN_TIMEOUT_SECONDS)
      if self._thread.is_alive():
        logging.error("%s did not stop within %.0f s; leaving it (a daemon thread) behind.",
                      self.description, JOIN_TIMEOUT_SECONDS)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.close()

  @property
  def error(self) -> Optional[BaseException]:
    return self._error

  def is_alive(self) -> bool:
    return self._thread.is_alive()

  @property
  def name(self) -> str:
    return self._thread.name


def raise_if_failed(workers: Iterable[Worker]) -> None:
  """Raises RuntimeError naming the first worker that failed or stopped on its own."""
  for w in workers:
    if w.error is not None:
      raise RuntimeError(f"{w.description} died: {w.error!r}") from w.error
    if not w.is_alive():
      raise RuntimeError(f"{w.description} stopped unexpectedly.")


def close_all(workers: Iterable[Worker]) -> None:
  """Tells every worker to stop, then joins each: they wind down together, not one by one."""
  workers = list(workers)
  for w in workers:
    w.request_stop()
  for w in workers:
    w.close()
