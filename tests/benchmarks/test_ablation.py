"""The correction ablation's report: cells, mean score over the run, measured lag, table, plot."""

import os

import pytest

from benchmarks import ablation


def _write_run(logdir, returns, lags, steps_per_game=100):
  os.makedirs(logdir)
  with open(os.path.join(logdir, "episodes.csv"), "w") as f:
    f.write("env_steps,wall_seconds,episode_return,episode_length,source\n")
    f.writelines(f"{steps_per_game * (i + 1)},{i + 1}.0,{r},10,local\n"
                 for i, r in enumerate(returns))
  with open(os.path.join(logdir, "metrics.csv"), "w") as f:
    f.write("env_steps,wall_seconds,policy_lag\n")
    f.writelines(f"{1000 * (i + 1)},{i + 1}.0,{lag}\n" for i, lag in enumerate(lags))


def test_cells_are_summarised_per_correction_and_delay(tmp_path):
  out = str(tmp_path)
  _write_run(os.path.join(out, "vtrace_delay0", "seed_0"), [10.0] * 40, [1, 1, 2, 2])
  _write_run(os.path.join(out, "vtrace_delay0", "seed_1"), [20.0] * 40, [1, 1, 4, 4])
  os.makedirs(os.path.join(out, "epsilon_delay0", "seed_0"))  # No episodes yet: ignored.
  _write_run(os.path.join(out, "none_delay16", "seed_0"), [0.0] * 20 + [30.0] * 20,
             [17, 17, 18, 18])
  report = ablation.summarize(out)
  assert set(report["configs"]) == {"vtrace_delay0", "none_delay16"}
  vtrace = report["configs"]["vtrace_delay0"]
  assert (vtrace["correction"], vtrace["delay"], vtrace["budget"]) == ("vtrace", 0, 4000)
  assert vtrace["final_score"] == pytest.approx(15.0)
  assert vtrace["policy_lag"] == pytest.approx(3.0)  # Mean of the second halves: 2 and 4.
  # A constant score from the first game (step 100) on: its mean over the run is that score
  # but for the grid's points before step 100 (0, 20.1, ..., 80.4: 5 of 200 points).
  assert vtrace["runs"]["seed_0"]["mean_score"] == pytest.approx(10.0 * 195 / 200)
  late = report["configs"]["none_delay16"]
  assert late["final_score"] == pytest.approx(30.0)
  assert late["mean_score"] < 15.0  # It learned in its second half only.
  table = ablation.format_table(report)
  assert "| vtrace | 15.00 (10.0, 20.0) | 14.62 | 3.0 | – | – | – |" in table
  assert table.splitlines()[0].count("delay 16") == 3
  assert "curve" in vtrace["runs"]["seed_0"]
  assert "curve" not in ablation.without_curves(report)["configs"]["vtrace_delay0"]["runs"][
      "seed_0"]
  png = str(tmp_path / "curves.png")
  ablation.plot(report, png, frames_per_step=1, title="test")
  assert os.path.getsize(png) > 1000
