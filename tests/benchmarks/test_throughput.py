"""Keeps benchmarks/ from rotting: its arithmetic, its report, and a tiny run end to end.

Not a timed test: the tiny run only checks that every measurement runs and reports sane numbers.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import end_to_end
from impala_jax import config as config_lib
from benchmarks import memory
from benchmarks import report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "throughput.py")


def _row(wall_seconds, env_steps, rss_mb, actor_env, policy_lag=1.0):
  return dict(wall_seconds=wall_seconds, env_steps=env_steps, rss_mb=rss_mb,
              time_actor_env=actor_env, time_learner_update=0.5, policy_lag=policy_lag,
              inference_batch_size=16.0, inference_latency_ms=2.0)


def test_summary_measures_after_warmup_and_weights_intervals():
  rows = [_row(1.0, 0, 100.0, 0.9), _row(2.0, 100, 110.0, 0.9), _row(3.0, 300, 120.0, 0.9),
          # Interval lengths 1 s and 3 s after the span's first row (wall 3.0).
          _row(4.0, 500, 130.0, 0.2), _row(7.0, 1100, 150.0, 0.6)]
  summary = end_to_end.summarize_metrics(rows, warmup_seconds=2.5, memory_from_seconds=2.0,
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
  summary = end_to_end.summarize_metrics(rows, warmup_seconds=10.0, memory_from_seconds=120.0)
  assert abs(summary["memory"]["growth_percent"]) < 1.0
  assert abs(summary["memory"]["peak_growth_percent"]) < 1.0
  # A real leak still shows.
  leaking = [dict(r, rss_mb=r["rss_mb"] + t) for t, r in enumerate(rows)]
  summary = end_to_end.summarize_metrics(leaking, warmup_seconds=10.0, memory_from_seconds=120.0)
  assert summary["memory"]["growth_percent"] > 20.0
  # The e2e summary's memory entry is memory.py's, from the first row at minute 2.
  assert summary["memory"] == memory.summarize_rss(leaking, first=120)


def test_summary_of_a_run_too_short_for_its_warmup_warns_and_uses_the_last_rows():
  rows = [_row(1.0, 0, 100.0, 0.5), _row(2.0, 100, 100.0, 0.5), _row(3.0, 400, 100.0, 0.5)]
  summary = end_to_end.summarize_metrics(rows, warmup_seconds=30.0, memory_from_seconds=30.0)
  assert summary["env_steps_per_second"] == pytest.approx(300.0)
  assert "warm-up" in summary["warning"]
  with pytest.raises(ValueError, match="needs two"):
    end_to_end.summarize_metrics(rows[:1], warmup_seconds=0.0, memory_from_seconds=0.0)


# A hand-made report: format_report must show each of its numbers, and the ratios.
_REPORT = dict(
    settings=dict(env="Pong-v5", num_actor_threads=2, num_envs=32, unroll_length=20,
                  batch_size=32, e2e_window_seconds=30.0, warmup_seconds=30.0,
                  learner_iters=10, inference_batch_sizes=[1, 16], inference_calls=100),
    machine=dict(cpu_count=2, load_average_1min_at_start=3.4, jax_devices=["cpu:0"],
                 versions=dict(jax="0.10.2", envpool="1.2.5"),
                 date="2026-11-22T01:27:05+00:00"),
    raw=dict(env_steps_per_second=6798.0, frames_per_second=27192.0),
    e2e=dict(shallow=dict(
        env_steps_per_second=1802.0, frames_per_second=7208.0, updates=146,
        time_fractions=dict(learner_update=0.889, actor_env=0.355, actor_inference=0.512),
        time_fraction_totals=dict(actor=0.867, learner=0.889),
        inference_batch_size=37.07, inference_latency_ms=13.05, policy_lag=None,
        memory=dict(peak_rss_mb=1277.0, growth_percent=1.56, peak_growth_percent=-0.5,
                    from_seconds=30.0, to_seconds=60.0),
        warning="too short")),
    learner=dict(shallow=dict(
        project=dict(samples_per_second=3261.0, ms_per_update=196.0,
                     ms_per_update_split=dict(stack=7.64, update=184.0)),
        reference=dict(samples_per_second=1151.0, ms_per_update=556.0),
        project_over_reference=2.83,
        first_loss=dict(project=1063.0, reference=1063.0, relative_difference=1.1e-7))),
    inference=dict(shallow=dict(batch_sizes={
        "1": dict(samples_per_second=1365.0, latency_ms=0.733, server_latency_ms=0.687),
        "16": dict(samples_per_second=8503.0, latency_ms=1.88, server_latency_ms=1.78)})))

def _section(text, title):
  """The lines of the table whose title starts with `title`: its header, then its rows."""
  lines = text.split("\n")
  start = next(i for i, line in enumerate(lines) if line.startswith(title))
  return lines[start + 1:lines.index("", start)]


def _find_rows(lines, expected, columns=1):
  """Asserts that each (label, values) of `expected` is a row of `lines`, in that order, its
  values printed as the report prints a number; the rows need not be adjacent."""
  position = 0
  for label, values in expected:
    cells = [report.format_value(v) for v in values]
    for position in range(position, len(lines)):
      parts = lines[position].split()
      if " ".join(parts[:-columns]) == label and parts[-columns:] == cells:
        break
    else:
      raise AssertionError(f"no row {label!r} {cells} (in order) in:\n" + "\n".join(lines))


def _assert_aligned(lines):
  """Every cell is right-aligned to its column: the header and all rows end at one width."""
  rows = [line for line in lines if not line.startswith("  warning")]
  assert len({len(line) for line in rows}) == 1, "\n".join(rows)


def test_report_shows_each_measured_number_and_ratio_in_aligned_tables():
  ratios = report.ratios(_REPORT)
  assert ratios == dict(end_to_end_over_raw_envpool=dict(shallow=1802.0 / 6798.0),
                        end_to_end_over_learner_only=dict(shallow=1802.0 / 3261.0),
                        learner_project_over_reference=dict(shallow=2.83))
  # Without raw EnvPool there is nothing to divide by.
  assert report.ratios(dict(e2e=_REPORT["e2e"]))["end_to_end_over_raw_envpool"] == dict(
      shallow=None)
  text = report.format_report(dict(_REPORT, ratios=ratios))
  header = text.split("\n")[:2]
  for fact in ("Pong-v5", "2 actor thread(s)", "32 envs", "T=20", "B=32"):
    assert fact in header[0], (fact, header[0])
  for fact in ("2 CPUs", "load 3.4", "jax 0.10.2", "cpu:0", "envpool 1.2.5", "2026-11-22"):
    assert fact in header[1], (fact, header[1])

  raw = _section(text, "Raw EnvPool")
  assert raw[0].split() == ["env", "steps/s", "frames/s"]
  _find_rows(raw, [("", [6798.0, 27192.0])], columns=2)
  e2e = _section(text, "End-to-end training (30 s after 30 s warm-up)")
  assert e2e[0].split() == ["shallow"]
  run = _REPORT["e2e"]["shallow"]
  _find_rows(e2e, [
      ("env steps/s", [1802.0]), ("frames/s", [7208.0]),
      ("÷ raw EnvPool", [1802.0 / 6798.0]), ("÷ learner-only capacity", [1802.0 / 3261.0]),
      ("updates (whole run)", [146]),
      *[(k, [run["time_fractions"][k]])
        for k in ("actor_env", "actor_inference", "learner_update")],
      ("actor total", [0.867]), ("learner total", [0.889]),
      ("inference batch size", [37.07]), ("inference latency ms", [13.05]),
      ("policy lag (updates)", [None]), ("peak RSS MB", [1277.0]),
      ("RSS growth % (means)", [1.56]), ("RSS growth % (peaks)", [-0.5]),
      ("from minute", [0.5]), ("to minute", [1.0])])
  assert "  warning (shallow): too short" in e2e
  learner = _section(text, "Learner only (32 unrolls × 20 steps, 10 timed updates)")
  _find_rows(learner, [
      ("project samples/s", [3261.0]), ("reference samples/s", [1151.0]),
      ("project ÷ reference", [2.83]), ("project ms/update", [196.0]), ("stack", [7.64]),
      ("update", [184.0]), ("reference ms/update", [556.0]),
      ("first loss, project", [1063.0]), ("first loss, reference", [1063.0]),
      ("relative difference", ["1.1e-07"])])
  inference = _section(text, "Inference only (one client thread, 100 calls per size)")
  for size, numbers in _REPORT["inference"]["shallow"]["batch_sizes"].items():
    _find_rows(inference, [
        (f"batch {size}: samples/s", [numbers["samples_per_second"]]),
        ("latency ms (client)", [numbers["latency_ms"]]),
        ("latency ms (server)", [numbers["server_latency_ms"]])])
  for table in (raw, e2e, learner, inference):
    _assert_aligned(table)


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
         "--networks=shallow", "--warmup_seconds=10", "--window_seconds=10",
         "--raw_warmup_seconds=1", "--log_interval_seconds=1", "--learner_iters=1",
         "--batch_size=4", "--inference_batch_sizes=1,4", "--inference_calls=10",
         "--measure=raw,e2e,learner,inference,pipeline", "--pipeline_layout=2x4",
         "--pipeline_warmup_seconds=3", f"--output={output}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "÷ raw EnvPool" in out.stdout and "project ÷ reference" in out.stdout

  report = json.loads(output.read_text())
  for section in ("settings", "machine", "raw", "e2e", "learner", "inference", "pipeline",
                  "ratios"):
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
  # The pipeline: the host's CPU per agent step, by stage, through the real path.
  pipeline = report["pipeline"]
  assert pipeline["num_actor_threads"] == 2 and pipeline["envs_per_thread"] == 4
  assert pipeline["env_steps_per_second"] > 0 and pipeline["host_us_per_step"] > 0
  for stage in ("actor_env", "actor_bookkeeping", "actor_inference", "actor_queue",
                "inference_assemble", "inference_policy", "inference_reply",
                "learner_transfer", "learner_dispatch", "learner_update", "other"):
    assert stage in pipeline["stage_us_per_step"], stage
  assert "Host pipeline" in out.stdout
  # The two learners compute the same loss on the same parameters and batch.
  assert learner["first_loss"]["relative_difference"] < 1e-4
  assert report["machine"]["cpu_count"] == os.cpu_count()


def _small_run_config(logdir, log_interval_seconds):
  return config_lib.TrainConfig(
      env=config_lib.EnvConfig("CartPole-v1", num_envs=4), num_actor_threads=1,
      network=config_lib.NetworkConfig("mlp"), unroll_length=5, batch_size=4,
      total_env_steps=10**9, logdir=str(logdir), log_interval_seconds=log_interval_seconds)


def test_e2e_measures_from_the_first_metrics_row_however_late_it_comes(tmp_path):
  result = end_to_end.measure_end_to_end(_small_run_config(tmp_path / "run", 0.5),
                                         warmup_seconds=1.0, window_seconds=2.0)
  assert result["first_row_seconds"] > 0
  assert result["measured_from_seconds"] >= result["first_row_seconds"] + 1.0
  assert result["env_steps_per_second"] > 0 and "warning" not in result


def test_e2e_without_a_first_row_by_its_deadline_stops_and_says_why(tmp_path):
  config = _small_run_config(tmp_path / "run", log_interval_seconds=600.0)
  with pytest.raises(TimeoutError, match="No metrics row within 3 s"):
    end_to_end.measure_end_to_end(config, warmup_seconds=1.0, window_seconds=1.0,
                                  first_row_deadline_seconds=3.0)
