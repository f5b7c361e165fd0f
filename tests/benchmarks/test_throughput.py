"""Keeps benchmarks/throughput.py from rotting: its arithmetic, and a tiny run end to end.

Not a timed test: the tiny run only checks that every measurement runs and reports sane numbers.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "throughput.py")


def _load_throughput():
  # By path: benchmarks/ is a scripts folder, not an installed package.
  spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


throughput = _load_throughput()


def _row(wall_seconds, env_steps, rss_mb, actor_env, policy_lag=1.0):
  return dict(wall_seconds=wall_seconds, env_steps=env_steps, rss_mb=rss_mb,
              time_actor_env=actor_env, time_learner_update=0.5, policy_lag=policy_lag,
              inference_batch_size=16.0, inference_latency_ms=2.0)


def test_summary_measures_after_warmup_and_weights_intervals():
  rows = [_row(1.0, 0, 100.0, 0.9), _row(2.0, 100, 110.0, 0.9), _row(3.0, 300, 120.0, 0.9),
          # Interval lengths 1 s and 3 s after the span's first row (wall 3.0).
          _row(4.0, 500, 130.0, 0.2), _row(7.0, 1100, 150.0, 0.6)]
  summary = throughput.summarize_metrics(rows, warmup_seconds=2.5, memory_from_seconds=2.0,
                                         frames_per_env_step=4)
  assert summary["env_steps_per_second"] == pytest.approx((1100 - 300) / (7.0 - 3.0))
  assert summary["frames_per_second"] == pytest.approx(4 * 200.0)
  assert summary["measured_from_seconds"] == 3.0
  # Rows before the span's first describe warm-up intervals and are left out.
  assert summary["time_fractions"]["actor_env"] == pytest.approx((0.2 * 1 + 0.6 * 3) / 4)
  assert summary["time_fractions"]["learner_update"] == pytest.approx(0.5)
  assert summary["memory"]["peak_rss_mb"] == 150.0
  # Memory span 2.0 → 7.0 s, windows of 5/4 s: rows at 2.0, 3.0 and at 7.0.
  assert summary["memory"]["rss_from_mb"] == pytest.approx(115.0)
  assert summary["memory"]["growth_percent"] == pytest.approx(100 * 35 / 115)
  assert "warning" not in summary


def test_rss_saw_tooth_is_not_reported_as_growth():
  # Allocation and release of batches: RSS alternates between 800 and 1,000 MB every row.
  rows = [_row(float(t), 100 * t, 800.0 if t % 2 else 1000.0, 0.5) for t in range(0, 400)]
  summary = throughput.summarize_metrics(rows, warmup_seconds=10.0, memory_from_seconds=120.0)
  assert abs(summary["memory"]["growth_percent"]) < 1.0
  assert abs(summary["memory"]["peak_growth_percent"]) < 1.0
  # A real leak still shows.
  leaking = [dict(r, rss_mb=r["rss_mb"] + t) for t, r in enumerate(rows)]
  summary = throughput.summarize_metrics(leaking, warmup_seconds=10.0, memory_from_seconds=120.0)
  assert summary["memory"]["growth_percent"] > 20.0


def test_summary_of_a_run_too_short_for_its_warmup_warns_and_uses_the_last_rows():
  rows = [_row(1.0, 0, 100.0, 0.5), _row(2.0, 100, 100.0, 0.5), _row(3.0, 400, 100.0, 0.5)]
  summary = throughput.summarize_metrics(rows, warmup_seconds=30.0, memory_from_seconds=30.0)
  assert summary["env_steps_per_second"] == pytest.approx(300.0)
  assert "warm-up" in summary["warning"]
  with pytest.raises(ValueError, match="needs two"):
    throughput.summarize_metrics(rows[:1], warmup_seconds=0.0, memory_from_seconds=0.0)


def _numbers(tree, path=""):
  """(path, value) for every number in a JSON tree."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _numbers(value, f"{path}.{key}")
  elif isinstance(tree, list):
    for i, value in enumerate(tree):
      yield from _numbers(value, f"{path}[{i}]")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree


def test_tiny_run_reports_every_measurement_and_ratio(tmp_path):
  output = tmp_path / "throughput.json"
  cmd = [sys.executable, SCRIPT, "--env=Pong-v5", "--num_envs=2", "--num_actor_threads=1",
         "--networks=shallow", "--warmup_seconds=10", "--window_seconds=4",
         "--raw_warmup_seconds=1", "--log_interval_seconds=1", "--learner_iters=1",
         "--batch_size=4", "--inference_batch_sizes=1,4", "--inference_calls=10",
         f"--output={output}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "÷ raw EnvPool" in out.stdout and "project ÷ reference" in out.stdout

  report = json.loads(output.read_text())
  for section in ("settings", "machine", "raw", "e2e", "learner", "inference", "ratios"):
    assert section in report, section
  for path, value in _numbers(report):
    assert math.isfinite(value), (path, value)

  e2e, learner = report["e2e"]["shallow"], report["learner"]["shallow"]
  positive = {
      "raw steps/s": report["raw"]["env_steps_per_second"],
      "raw frames/s": report["raw"]["frames_per_second"],
      "e2e steps/s": e2e["env_steps_per_second"],
      "e2e frames/s": e2e["frames_per_second"],
      "e2e peak RSS": e2e["memory"]["peak_rss_mb"],
      "learner project": learner["project"]["samples_per_second"],
      "learner reference": learner["reference"]["samples_per_second"],
      "e2e ÷ raw": report["ratios"]["end_to_end_over_raw_envpool"]["shallow"],
      "e2e ÷ learner": report["ratios"]["end_to_end_over_learner_only"]["shallow"],
      "project ÷ reference": report["ratios"]["learner_project_over_reference"]["shallow"],
  }
  for size in ("1", "4"):
    positive[f"inference {size}"] = (
        report["inference"]["shallow"]["batch_sizes"][size]["samples_per_second"])
  for name, value in positive.items():
    assert value is not None and value > 0, (name, value)
  # Atari: frames are 4 agent steps.
  assert report["raw"]["frames_per_second"] == pytest.approx(
      4 * report["raw"]["env_steps_per_second"])
  for phase in ("actor_env", "actor_inference", "actor_queue", "learner_update",
                "learner_transfer", "learner_batch_wait"):
    assert e2e["time_fractions"][phase] is not None, phase
  # The two learners compute the same loss on the same parameters and batch.
  assert learner["first_loss"]["relative_difference"] < 1e-4
  assert report["machine"]["cpu_count"] == os.cpu_count()
