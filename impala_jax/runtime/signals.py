"""SIGINT/SIGTERM as a stop request: the run finishes its update, saves, and joins its threads."""

import signal
import threading

from absl import logging


class SignalStop:
  """While active (a context manager), SIGINT and SIGTERM set `event` instead of killing.

  Installs handlers only in the main thread (Python allows no other); elsewhere it does
  nothing, and the owner stops the run through `event` directly.
  """

  def __init__(self, event: threading.Event):
    self._event = event
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received %s: stopping after the current update.",
                    signal.Signals(signum).name)
    self._event.set()

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
