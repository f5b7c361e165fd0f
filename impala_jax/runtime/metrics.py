"""Where metrics go: `metrics.csv`, `episodes.csv` and TensorBoard events in the run directory.

Library code never prints; the terminal summary is the runtime's business (absl logging and a
tqdm bar). The CSV's columns are fixed when the file is created. A resumed run appends to it
after dropping the rows past the step it resumes from: they were written after the checkpoint it
restored, and the run is about to record those steps again. TensorBoard purges them the same way.
"""

import collections
import csv
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
from tensorboardX import SummaryWriter

from impala_jax import types

# Always present, in this order; other metrics follow in the order first seen.
CSV_COLUMNS = ("env_steps", "wall_seconds", "episode_return", "recent_episode_return",
               "episode_length", "episodes", "steps_per_second", "policy_lag", "loss",
               "policy_loss", "baseline_loss", "entropy_loss", "entropy")

# One row per finished episode (Atari: per whole game), for curves and "steps to a score";
# `source` is who played it ("local", or the remote host: `types.EpisodeStats.source`), `game`
# the env id it was played in (a multi-task run's games: `types.EpisodeStats.task`).
EPISODE_COLUMNS = ("env_steps", "wall_seconds", "episode_return", "episode_length", "source",
                   "game")
# The columns of either file that hold text, not numbers.
TEXT_COLUMNS = ("source", "game")


class MetricsWriter:
  """Appends rows to `<logdir>/metrics.csv` and scalars to TensorBoard under `<logdir>/tb`.

  A new file's columns are `CSV_COLUMNS` followed by the other keys of the first row; a resumed
  run keeps the existing header.

  Args:
    logdir: the run directory.
    start_step: the env step the run starts from (0, or the restored checkpoint's): rows and
      TensorBoard points recorded after it are dropped.
  """

  def __init__(self, logdir: str, start_step: int):
    os.makedirs(logdir, exist_ok=True)
    self.csv_path = os.path.join(logdir, "metrics.csv")
    drop_rows_after(self.csv_path, start_step)
    self.columns: Optional[Tuple[str, ...]] = None
    if os.path.exists(self.csv_path) and os.path.getsize(self.csv_path) > 0:
      with open(self.csv_path, newline="") as f:
        self.columns = tuple(next(csv.reader(f)))
    self._file = open(self.csv_path, "a", newline="")
    self._writer = None
    if self.columns is not None:
      self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")
    self._tensorboard = SummaryWriter(os.path.join(logdir, "tb"), purge_step=start_step + 1)

  def write(self, row: Dict[str, float], step: Optional[int] = None) -> None:
    """One CSV row (missing columns left empty) and one TensorBoard point per finite value."""
    step = int(row.get("env_steps", 0)) if step is None else step
    if self._writer is None:
      self.columns = CSV_COLUMNS + tuple(k for k in row if k not in CSV_COLUMNS)
      self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")
      self._writer.writeheader()
    self._writer.writerow({k: v for k, v in row.items() if v is not None})
    self._file.flush()
    for name, value in row.items():
      if name not in ("env_steps", "wall_seconds") and value is not None and math.isfinite(value):
        self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._file.close()
    self._tensorboard.close()


class EpisodeWriter:
  """Appends one row per finished episode to `<logdir>/episodes.csv` (`EPISODE_COLUMNS`).

  `env_steps` and `wall_seconds` are the learner's count and the run's clock when the episode
  was recorded (at the metrics row that collected it), so curves line up with metrics.csv.

  Args:
    logdir: the run directory.
    start_step: the env step the run starts from (rows after it are dropped).
    games: the run's env ids by task id (`EnvConfig.tasks`): the `game` of a task's episodes.
  """

  def __init__(self, logdir: str, start_step: int, games: Sequence[str]):
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, "episodes.csv")
    drop_rows_after(path, start_step)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    self._games = tuple(games)
    # The real scores, sources and tasks of the games the resumed-from run finished (up to its
    # checkpoint), in order, so that the scores over the last games carry on across a resume.
    self.previous_returns: List[float] = []
    self.previous_sources: List[str] = []
    self.previous_tasks: List[int] = []
    # A file from before the `source` or `game` column keeps its columns.
    columns = EPISODE_COLUMNS
    if not new:
      columns = self._read_previous(path)
    self._file = open(path, "a", newline="")
    self._writer = csv.DictWriter(self._file, columns, extrasaction="ignore")
    if new:
      self._writer.writeheader()

  def _read_previous(self, path: str) -> Tuple[str, ...]:
    """Reads the previous games (a file from before the `source` and `game` columns: "local"
    games of task 0, the run's one game); returns the file's columns."""
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = tuple(reader.fieldnames or EPISODE_COLUMNS)
    unknown = collections.Counter()
    for row in rows:
      game = row.get("game") or self._games[0]
      if game not in self._games:
        unknown[game] += 1
        continue
      self.previous_returns.append(float(row["episode_return"]))
      self.previous_sources.append(row.get("source") or types.LOCAL_SOURCE)
      self.previous_tasks.append(self._games.index(game))
    if unknown:
      logging.warning("%s: %d games played in %s, which this run (%s) does not play: left out "
                      "of its scores.", path, sum(unknown.values()), ", ".join(unknown),
                      ",".join(self._games))
    return columns

  def write(self, env_steps: int, wall_seconds: float, episodes) -> None:
    """`episodes`: `types.EpisodeStats` finished since the last call."""
    for e in episodes:
      self._writer.writerow(dict(
          env_steps=env_steps, wall_seconds=f"{wall_seconds:.3f}",
          episode_return=e.episode_return, episode_length=e.episode_length, source=e.source,
          game=self._games[e.task]))
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_csv(path: str) -> List[Dict[str, Any]]:
  """The rows of a metrics.csv or episodes.csv as written so far, for curves and benchmarks:
  numbers as floats, an empty cell as None, `TEXT_COLUMNS` as text; [] without the file.

  Raises:
    ValueError, TypeError: a row that is not whole (one caught half written).
  """
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [{k: _cell(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(column: str, text: Optional[str]) -> Any:
  if text in ("", None):
    return None
  return text if column in TEXT_COLUMNS else float(text)


def drop_rows_after(path: str, step: int) -> int:
  """Drops the rows of the CSV at `path` whose `env_steps` exceed `step`; returns how many.

  Starting from scratch (`step` 0), the whole file goes: it is an earlier run that never saved
  a checkpoint. The file is replaced atomically, so a crash leaves the old or the new one.
  """
  if not os.path.exists(path):
    return 0
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    return 0
  header, body = rows[0], rows[1:]
  column = header.index("env_steps")
  keep = [r for r in body if step > 0 and r and int(float(r[column])) <= step]
  dropped = len(body) - len(keep)
  if step == 0:
    os.remove(path)
  elif dropped:
    temporary = path + ".tmp"
    with open(temporary, "w", newline="") as f:
      csv.writer(f).writerows([header] + keep)
    os.replace(temporary, path)
  if dropped:
    logging.warning("%s: dropped %d rows past env step %d (not covered by the checkpoint the "
                    "run starts from).", path, dropped, step)
  return dropped


class NullWriter:
  """A writer that keeps nothing: what processes other than 0 of a multi-process run use."""

  previous_returns: Sequence[float] = ()
  previous_sources: Sequence[str] = ()
  previous_tasks: Sequence[int] = ()

  def write(self, *args, **kwargs) -> None:
    del args, kwargs

  def close(self) -> None:
    pass
