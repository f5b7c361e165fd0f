"""memory: the process's RSS during an end-to-end run, and its growth.

Read from the `rss_mb` column of the run's metrics.csv (`end_to_end.summarize_metrics` calls
`summarize_rss`; its result is the `memory` entry of each e2e result). Every measurement runs
in one process, so these figures include what earlier measurements left behind. For the
cleanest memory figure run one network alone, `--measure=e2e --networks=deep`; for growth over
minutes 2 → 10, `--long`.
"""

import statistics
from typing import Any, Dict, Mapping, Optional, Sequence

_MEMORY_WINDOW_SECONDS = 60.0


def summarize_rss(rows: Sequence[Mapping[str, Optional[float]]], first: int) -> Dict[str, Any]:
  """Peak RSS over all `rows`, and RSS growth from `rows[first]` to the last row.

  Args:
    rows: metrics.csv rows with floats, at least `wall_seconds` and `rss_mb`.
    first: index of the row the growth is measured from.

  Returns:
    peak_rss_mb; the span (from_seconds, to_seconds) and the window at each of its ends;
    rss_from_mb and rss_last_mb, the mean RSS of the rows in the first and last window;
    growth_percent between those means, and peak_growth_percent between the windows' peaks.
  """
  last = len(rows) - 1
  # RSS saw-tooths by ±25% within seconds as batches are allocated and freed, so two single
  # rows measure the phase of the saw, not growth: compare means (and peaks) of the rows in a
  # window at each end of the memory span (60 s, or a quarter of a shorter span).
  t_from, t_last = rows[first]["wall_seconds"], rows[last]["wall_seconds"]
  window = min(_MEMORY_WINDOW_SECONDS, (t_last - t_from) / 4)
  rss_start = [r["rss_mb"] for r in rows[first:] if r["wall_seconds"] <= t_from + window]
  rss_end = [r["rss_mb"] for r in rows[first:] if r["wall_seconds"] >= t_last - window]
  rss_from, rss_last = statistics.fmean(rss_start), statistics.fmean(rss_end)
  return dict(
      peak_rss_mb=max(r["rss_mb"] for r in rows),
      from_seconds=rows[first]["wall_seconds"],
      to_seconds=rows[last]["wall_seconds"],
      window_seconds=window,
      rss_from_mb=rss_from,  # Means of the rows in the first and last window.
      rss_last_mb=rss_last,
      growth_percent=100.0 * (rss_last - rss_from) / rss_from,
      peak_growth_percent=100.0 * (max(rss_end) - max(rss_start)) / max(rss_start))
