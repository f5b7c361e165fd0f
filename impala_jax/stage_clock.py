"""Where one thread's time goes: wall and CPU seconds per stage of its loop.

Every thread of the data path (actors, the inference server, the learner) keeps one
`StageClock`. `lap(stage)` charges the time since the previous lap to `stage`, so a loop that
calls `lap` at the end of each of its stages accounts for all of its time. Two clocks are kept:

  wall   `time.perf_counter`: what the `time_*` columns of metrics.csv report as fractions of a
         thread's time (waiting included);
  cpu    `time.thread_time`: the CPU this thread itself spent, waiting excluded. On a host whose
         Python threads share one interpreter lock, the sum of every thread's CPU per agent step
         is the ceiling of the whole system (`benchmarks/pipeline.py` reports it per stage).

The dicts are written by the owning thread only and read by others; each float is replaced in
one assignment, so a reader sees a total that is at most one lap old.
"""

import time
from typing import Dict, Iterable


class StageClock:
  """Cumulative wall and CPU seconds per stage of one thread's loop."""

  def __init__(self, stages: Iterable[str]):
    stages = tuple(stages)
    self.wall: Dict[str, float] = dict.fromkeys(stages, 0.0)
    self.cpu: Dict[str, float] = dict.fromkeys(stages, 0.0)
    self._wall = time.perf_counter()
    self._cpu = time.thread_time()

  def restart(self) -> None:
    """Starts the next lap now (call from the owning thread before its loop)."""
    self._wall = time.perf_counter()
    self._cpu = time.thread_time()

  def lap(self, stage: str) -> None:
    """Charges the time since the last lap (or `restart`) to `stage`."""
    wall, cpu = time.perf_counter(), time.thread_time()
    self.wall[stage] += wall - self._wall
    self.cpu[stage] += cpu - self._cpu
    self._wall, self._cpu = wall, cpu
