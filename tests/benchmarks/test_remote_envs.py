"""Keeps benchmarks/remote_envs.py's Redis layouts from rotting: the store's arithmetic, and a
tiny "redis 1 host" run on CartPole that must report its numbers and leave nothing running.

Not a timed test: the tiny run only checks that the layout runs and reports sane numbers.
"""

import json
import os
import subprocess
import sys

import psutil
import pytest

from benchmarks import store_layouts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "remote_envs.py")


def _row(wall_seconds, env_steps, dropped, stale, length):
  return dict(wall_seconds=wall_seconds, env_steps=env_steps, store_dropped=dropped,
              stale_unrolls=stale, rejected_blobs=0.0, store_length=length,
              bytes_per_unroll=1000.0)


def test_store_summary_counts_the_window_and_the_hosts_production():
  t = 10  # Unroll length.
  rows = [_row(2.0, 0, 50, 1, 64), _row(4.0, 800, 60, 2, 64),
          # The window: 4.0 → 8.0 s, 1,600 steps = 160 unrolls consumed.
          _row(6.0, 1600, 90, 2, 100), _row(8.0, 2400, 100, 5, 80)]
  summary = store_layouts.summarize(rows, measured_from_seconds=4.0, unroll_length=t)
  assert summary["unrolls_consumed_window"] == pytest.approx(160)
  assert summary["unrolls_dropped_by_store_window"] == 40
  assert summary["stale_unrolls_window"] == 3
  assert summary["unrolls_dropped_by_store_run"] == 100
  assert summary["bytes_per_step"] == pytest.approx(100.0)
  # Produced = consumed + dropped + stale + the store's growth (16) = 219 unrolls in 4 s.
  assert summary["hosts_env_steps_per_second"] == pytest.approx(219 * t / 4.0)


def _leftovers(tmp_path, store_url):
  """Processes this test's run started that still run: any with its files on the command
  line, and the redis-server on its port (which names itself `redis-server 127.0.0.1:PORT`)."""
  address = store_url[len("redis://"):].rsplit("/", 1)[0]
  found = []
  for proc in psutil.process_iter(["pid", "cmdline"]):
    cmdline = " ".join(proc.info["cmdline"] or [])
    if str(tmp_path) in cmdline or ("redis-server" in cmdline and address in cmdline):
      found.append(f"{proc.info['pid']}: {cmdline}")
  return found


def test_tiny_redis_run_reports_its_numbers_and_stops_everything(tmp_path):
  output = tmp_path / "report.json"
  cmd = [sys.executable, SCRIPT, "--env=CartPole-v1", "--layouts=redis 1 host",
         "--total_envs=8", "--warmup_seconds=10", "--window_seconds=10",
         "--log_interval_seconds=2", f"--workdir={tmp_path / 'runs'}", f"--output={output}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  print(out.stdout)  # The table, for `pytest -s`.
  report = json.loads(output.read_text())
  assert report["settings"]["learner_script"] == "control.py"
  layout = report["layouts"]["redis 1 host"]
  assert layout["env_steps_per_second"] > 0
  assert layout["store"]["bytes_per_unroll"] > 0
  assert layout["store"]["unroll_length"] == 10
  assert layout["policy_lag"] is not None and layout["policy_lag"] >= 0
  lag = layout["policy_lag_over_rows"]
  assert None not in lag.values() and lag["p50"] <= lag["p95"] <= lag["max"]
  assert layout["store"]["rejected_blobs_run"] == 0  # The hosts' unrolls fit the learner's.
  assert "bytes/unroll via Redis" in out.stdout and "p95 of row means" in out.stdout
  assert not _leftovers(tmp_path, layout["trajectory_store"])
  # The password is in a 0600 file only.
  password_file = tmp_path / "runs" / "redis_1_host" / "redis_password"
  assert password_file.stat().st_mode & 0o077 == 0
  assert password_file.read_text().strip() not in out.stdout + out.stderr
