"""The lifetime of one background thread, shared by the actors and the inference server.

A `Worker` owns exactly one daemon thread: `start()` launches it, `close()` asks it to stop
(`self._stop` is set; the loop must re-check it at least every ~0.1 s) and joins it. An
exception that ends the thread is kept in `error` for the owner to re-raise in its own thread.
"""

import threading
from typing import Optional


class Worker:
  """Base class: subclasses implement `_run()`, a loop that returns once `_stop` is set."""

  def __init__(self, name: str):
    self._stop = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._main, name=name, daemon=True)

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
      self._thread.join()

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
