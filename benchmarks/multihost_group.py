"""Runs one measurement of benchmarks/multihost_learner.py: a group of worker processes.

Each worker (`python -m benchmarks.multihost_worker`) runs on CPU with its own number of host
devices and writes its result as JSON. The group is killed as soon as one of its processes
fails (the others would wait in a collective until the timeout), or when its timeout passes;
every process started is waited for.
"""

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_MODULE = "benchmarks.multihost_worker"
# After a kill, how long to wait for the process to be gone.
_KILL_WAIT_SECONDS = 10.0
# How often the parent polls its group.
_POLL_SECONDS = 0.2


def free_port() -> int:
  """A free TCP port on 127.0.0.1 (free when asked: the coordinator binds it moments later)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def worker_env(devices: int) -> Dict[str, str]:
  """The parent's environment, on CPU, with exactly `devices` host devices per process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # The parent's own XLA flags would change what is measured.
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _tail(path: str, chars: int = 3000) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()[-chars:]
  except OSError:
    return ""


def _wait_all(procs: Sequence[subprocess.Popen], deadline: float) -> List[int]:
  """Exit codes of all of `procs`; returns early when any fails (the caller kills the rest)."""
  while True:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
      return codes
    if time.monotonic() > deadline:
      raise TimeoutError
    time.sleep(_POLL_SECONDS)


def _reap(procs: Sequence[subprocess.Popen]) -> None:
  """Kills whatever still runs, and waits for every process to be gone."""
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    try:
      p.wait(timeout=_KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
      logging.error("Process %d did not die within %.0f s of SIGKILL.", p.pid,
                    _KILL_WAIT_SECONDS)


def _start_worker(worker_flags: Sequence[str], env: Dict[str, str], log_path: str
                  ) -> subprocess.Popen:
  cmd = [sys.executable, "-m", WORKER_MODULE, *worker_flags]
  with open(log_path, "w") as log:  # The child holds its own copy of the descriptor.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=REPO)


def run_group(worker_flags: Sequence[str], num_processes: int, devices: int,
              timeout_seconds: float, workdir: str, name: str,
              pids: List[int]) -> List[Dict[str, Any]]:
  """Runs one measurement: `num_processes` workers; returns each one's result, by id.

  Args:
    worker_flags: the measurement's flags, the same for every process.
    num_processes: 1 runs the learner alone; more form a group on a free loopback port.
    devices: host devices per process.
    timeout_seconds: the whole group's limit; past it, every process is killed.
    workdir: where the logs and results go.
    name: the measurement's name, for file names and errors.
    pids: every started process's id is appended (the caller's record that all were reaped).

  Raises:
    RuntimeError: a process failed or the group timed out (with the log's tail).
  """
  port = free_port() if num_processes > 1 else 0
  procs, logs, results = [], [], []
  try:
    for process_id in range(num_processes):
      results.append(os.path.join(workdir, f"{name}.{process_id}.json"))
      logs.append(os.path.join(workdir, f"{name}.{process_id}.log"))
      procs.append(_start_worker(
          [f"--process_id={process_id}", f"--num_processes={num_processes}",
           f"--coordinator_port={port}", f"--result_file={results[-1]}",
           f"--timeout_seconds={timeout_seconds}", *worker_flags],
          worker_env(devices), logs[-1]))
      pids.append(procs[-1].pid)
    try:
      codes = _wait_all(procs, time.monotonic() + timeout_seconds)
    except TimeoutError:
      raise RuntimeError(  # pylint: disable=raise-missing-from
          f"{name}: timed out after {timeout_seconds:.0f} s; process 0's log:\n"
          f"{_tail(logs[0])}")
    if any(c != 0 for c in codes):
      failed = next(i for i, c in enumerate(codes) if c not in (None, 0))
      raise RuntimeError(f"{name}: process {failed} exited with {codes[failed]}; its log:\n"
                         f"{_tail(logs[failed])}")
  finally:
    _reap(procs)
  out = []
  for path in results:
    with open(path) as f:
      out.append(json.load(f))
  return out
