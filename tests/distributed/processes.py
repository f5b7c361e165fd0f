"""Helpers of the tests that run learners and hosts as real processes: start, wait, read, reap."""

import csv
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate, timeout, what):
  """Polls `predicate` until it returns something true (returned), or fails after `timeout` s."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(0.5)
  raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read(path):
  """A log file's text so far ("" before it exists)."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return f.read()
  except FileNotFoundError:
    return ""


def metrics(logdir):
  """The rows of a run's metrics.csv so far."""
  path = os.path.join(logdir, "metrics.csv")
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


class Processes:
  """Starts Python subprocesses with their output in files; kills and reaps all at the end."""

  def __init__(self, tmp_path, environ=None):
    self._tmp_path = tmp_path
    self._environ = environ
    self.procs = []

  def start(self, name, args):
    log_path = self._tmp_path / f"{name}.log"
    log = open(log_path, "w")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO, env=self._environ)
    proc.log_path, proc.log_file = log_path, log
    self.procs.append(proc)
    return proc

  def close(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
    for proc in self.procs:
      proc.wait(timeout=30)
      proc.log_file.close()
