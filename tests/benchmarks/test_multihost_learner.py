"""Keeps benchmarks/multihost_learner.py from rotting: its arithmetic and a tiny run end to end.

Not a timed test: the tiny run (CartPole-sized MLP, 2 processes on loopback) only checks that
every measurement runs, reports sane numbers, and leaves no process behind.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import psutil
import pytest

from benchmarks import multihost_group
from benchmarks import multihost_model
from benchmarks import multihost_worker
from impala_jax.learning import update

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "multihost_learner.py")


def test_hlo_operand_count_reads_combined_and_async_all_reduces():
  hlo = ("  %all-reduce = (f32[64,64]{1,0}, f32[64]{0}) all-reduce(%bitcast, %bitcast.2), "
         "channel_id=1\n"
         "  %gte = f32[64]{0} get-tuple-element(%all-reduce), index=1\n"
         "  %ars = f32[] all-reduce-start(%p0), channel_id=2\n"
         # Unoptimized HLO names each operand's shape, whose commas are no operands.
         "  %ar = (f32[2,3]{1,0}, f32[3]{0}) all-reduce(f32[2,3]{1,0} %a, f32[3]{0} %b), "
         "to_apply=%sum\n")
  assert multihost_worker.all_reduce_operands(hlo) == 5


def test_the_update_s_pmean_all_reduces_one_array_where_the_tree_had_one_per_leaf():
  tree = {"w": np.zeros((1, 4, 3), np.float32), "b": np.zeros((1, 3), np.float32),
          "c": {"v": np.zeros((1, 2), np.float32)}}

  def operands(fn):
    pmapped = jax.pmap(fn, axis_name="i")
    # Before optimization: on one device XLA would remove the all-reduce altogether.
    return multihost_worker.all_reduce_operands(
        pmapped.lower(tree).compiler_ir("hlo").as_hlo_text())

  assert operands(lambda t: jax.lax.pmean(t, "i")) == 3
  assert operands(lambda t: update.pmean_as_one_buffer(t, "i")) == 1


def test_cost_model_recovers_the_latency_and_bandwidth_it_was_built_from():
  alpha_ms, bandwidth, payload, leaves = 0.5, 1e9, 4_000_000, 10
  transfer_ms = 1.0 * payload / bandwidth * 1000.0  # 2(D−1)/D = 1 at D = 2.
  allreduce = dict(global_devices=2, payload_bytes=payload, operands_params_tree=leaves,
                   median_ms_one_float=2 * alpha_ms,
                   median_ms_flat=2 * alpha_ms + transfer_ms,
                   median_ms_params_tree=leaves * 2 * alpha_ms + transfer_ms)
  model = multihost_model.cost_model(100.0, 160, allreduce, update_operands=2,
                                     link_gbps=8.0, link_latency_us=100.0, hosts=(1, 2, 4))
  fitted = model["links"]["loopback (fitted)"]
  assert fitted["alpha_ms"] == pytest.approx(alpha_ms)
  assert fitted["bytes_per_second"] == pytest.approx(bandwidth)
  one, four = fitted["predictions"]["1"], fitted["predictions"]["4"]
  assert one["ms_per_update"] == 100.0 and one["efficiency"] == 1.0
  # 2 arrays (gradients, metrics) × 6 steps × 0.5 ms, then 1.5 × the payload's 4 ms.
  assert four["allreduce_ms"] == pytest.approx(2 * 6 * 0.5 + 1.5 * 4.0)
  assert four["samples_per_second"] == pytest.approx(4 * 160 / (four["ms_per_update"] / 1000))
  assumed = model["links"]["8 Gbit/s, 100 µs (assumed)"]
  assert assumed["bytes_per_second"] == pytest.approx(1e9)
  assert model["check"]["one_float_ms_predicted"] == pytest.approx(
      allreduce["median_ms_one_float"])


def test_cost_model_falls_back_to_the_lone_latency_for_a_one_leaf_network():
  allreduce = dict(global_devices=2, payload_bytes=1000, operands_params_tree=1,
                   median_ms_one_float=1.0, median_ms_flat=1.0, median_ms_params_tree=1.0)
  model = multihost_model.cost_model(10.0, 100, allreduce, update_operands=1,
                                     link_gbps=10.0, link_latency_us=50.0, hosts=(2,))
  fitted = model["links"]["loopback (fitted)"]
  assert fitted["alpha_ms"] == pytest.approx(0.5)
  assert fitted["bytes_per_second"] == float("inf")  # Latency-bound: no bandwidth term.
  assert fitted["predictions"]["2"]["allreduce_ms"] == pytest.approx(1.0)
  assert model["update_all_reduce_operands"] == 1


def _running(pid):
  """Whether `pid` is still one of this benchmark's workers (not a reused id)."""
  try:
    process = psutil.Process(pid)
    return (process.status() != psutil.STATUS_ZOMBIE and
            multihost_group.WORKER_MODULE in process.cmdline())
  except psutil.NoSuchProcess:
    return False


def test_tiny_run_reports_one_and_two_processes_and_reaps_them(tmp_path):
  output = tmp_path / "multihost_learner.json"
  cmd = [sys.executable, SCRIPT, "--env=CartPole-v1", "--network=mlp", "--batch_size=2",
         "--unroll_length=5", "--warmup_updates=1", "--updates=2", "--allreduce_iters=3",
         "--device_counts=1", "--timeout_seconds=75", f"--output={output}"]
  benchmark = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
  try:
    # Two measurements (1 process, then 2), far slower than alone on a loaded 2-core machine.
    stdout, stderr = benchmark.communicate(timeout=150)
  except subprocess.TimeoutExpired:
    benchmark.terminate()  # The benchmark reaps its workers on SIGTERM.
    stdout, stderr = benchmark.communicate(timeout=30)
  finally:
    if benchmark.poll() is None:
      benchmark.kill()
      benchmark.wait()
  assert benchmark.returncode == 0, stdout[-3000:] + stderr[-3000:]
  assert "2 proc, 1 dev" in stdout and "Cost model" in stdout
  report = json.loads(output.read_text())
  one, two = report["runs"]["1x1"], report["runs"]["2x1"]
  assert one["samples_per_second"] > 0 and two["samples_per_second"] > 0
  assert (one["process_count"], two["process_count"]) == (1, 2)
  # The same per-process batch: twice the samples per update in the group.
  assert two["samples_per_update"] == 2 * one["samples_per_update"] == 2 * 2 * 5
  assert all(two["allreduce"][f"ms_{k}"] > 0 for k in ("flat", "params_tree", "one_float"))
  assert two["allreduce"]["payload_bytes"] == 4 * two["parameters"]
  # One optimizer step: its gradients and its metrics, each one flat buffer, not the leaves.
  assert two["update_all_reduce_operands"] == 2
  assert two["allreduce"]["operands_params_tree"] == two["allreduce"]["leaves"] > 2
  assert report["cost_model"]["links"]["loopback (fitted)"]["predictions"]["2"][
      "samples_per_second"] > 0
  assert len(report["worker_pids"]) == 3  # One alone, then two together.
  assert not [pid for pid in report["worker_pids"] if _running(pid)]
