r"""The learner with one process, and with N processes as one jax.distributed learner.

    python benchmarks/multihost_learner.py                    # Pong-v5, shallow, 8 unrolls
    python benchmarks/multihost_learner.py --device_counts=1  # without 2 processes × 2 devices
    python -m benchmarks.multihost_learner --env=CartPole-v1 --network=mlp --updates=3  # tiny

Each measurement runs in fresh worker processes (`multihost_worker`), one after another:

  1 process   The learner alone (`learning.Learner`, no jax.distributed) on `--batch_size`
              synthetic unrolls shaped like the actors' (Pong-v5: 84×84×4 uint8 frames):
              samples (agent steps) per second and ms per update, over `--updates` updates
              after `--warmup_updates`.
  N processes `--num_processes` processes on 127.0.0.1 joined by `multihost.initialize` (gloo
              CPU collectives) into one learner, whose update all-reduces its gradients and
              metrics, each as one flat buffer, over every device of every process. Each
              process feeds its own batch of `--batch_size` unrolls: the global batch is N×.
              Process 0 times the group after a barrier. Once per `--device_counts` entry,
              with each process given that many host devices.
  all-reduce  In each group, after the learner: `--allreduce_iters` blocking `pmean`s of the
              parameters' bytes as one flat array (what the update does) and as the parameter
              tree, one array per leaf (what it did before; on gloo each array costs a round
              trip), and of one float32 (the latency).

Also reported: the learner's split of an update (`Learner.seconds`: stacking, host→device
transfer, the update with its all-reduce and any wait for the slower process) and each
process's CPU seconds per wall second ("cores busy"). N processes on one machine share the
cores one process already keeps busy, so the group is not expected to be faster here; the
gain is for N machines, which the cost model (`multihost_model`) predicts from these numbers.

It prints a table and writes everything, with the machine's description, as JSON to
`--output`. Every worker is reaped, also on failure, timeout, Ctrl-C or SIGTERM.
"""

import os
import shutil
import signal
import sys
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

# Run as a script, the repository root is not on the path: add it for `benchmarks.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import multihost_group
from benchmarks import multihost_model
from benchmarks import multihost_worker
from benchmarks import report as report_lib
from benchmarks import synthetic
from impala_jax import config as config_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# The flags every worker of a measurement gets from the parent.
_WORKER_FLAGS = ("env", "network", "image_size", "unroll_length", "batch_size",
                 "warmup_updates", "updates", "allreduce_iters", "seed")


def define_flags() -> None:
  """Defines this script's flags (at run time only, so that importing it defines none)."""
  multihost_worker.define_measurement_flags()
  flags.adopt_module_key_flags(multihost_worker)  # So that --help lists them.
  flags.DEFINE_list("device_counts", ["1", "2"], "Host devices per process in the multi-process "
                    "runs, one run each (e.g. 1,2).")
  flags.DEFINE_float("model_link_gbps", 10.0, "Cost model: the assumed link between hosts, "
                     "Gbit/s.")
  flags.DEFINE_float("model_link_latency_us", 50.0, "Cost model: the assumed latency of one "
                     "all-reduce step between hosts, µs.")
  flags.DEFINE_string("output", "benchmarks/results/multihost_learner.json",
                      "Where the JSON goes.")


def run_name(processes: int, devices: int) -> str:
  return f"{processes}x{devices}"


def summarize(runs: Mapping[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
  """Per run: process 0's numbers, every process's cores busy, ratios to the 1-process run.

  In a group, the update's all-reduce is taken to cost the flat all-reduce's mean (the update
  all-reduces its gradients as one flat buffer of the same bytes).
  """
  one = runs[run_name(1, 1)][0]["learner"]
  out = {}
  for name, results in runs.items():
    learner = results[0]["learner"]
    row = dict(learner)
    row["cores_busy_per_process"] = [r["learner"]["cores_busy"] for r in results]
    row["cores_busy_total"] = sum(row["cores_busy_per_process"])
    row["samples_per_second_over_one_process"] = (learner["samples_per_second"] /
                                                  one["samples_per_second"])
    row["ms_per_update_over_one_process"] = learner["ms_per_update"] / one["ms_per_update"]
    if "allreduce" in results[0]:
      allreduce = dict(results[0]["allreduce"])
      allreduce["share_of_update"] = allreduce["ms_flat"] / learner["ms_per_update"]
      row["allreduce"] = allreduce
      # What is left of the update: compute, and waiting for the slower process.
      row["update_ms_less_allreduce"] = (learner["ms_per_update_split"]["update"] -
                                         allreduce["ms_flat"])
    out[name] = row
  return out


def run_benchmark(settings: Mapping[str, Any]) -> Dict[str, Any]:
  """The 1-process run, then each multi-process run; returns the report (see module doc)."""
  report: Dict[str, Any] = dict(settings=dict(settings), machine=report_lib.machine_info())
  worker_flags = [f"--{k}={settings[k]}" for k in _WORKER_FLAGS]
  pids: List[int] = []
  runs = {}
  workdir = tempfile.mkdtemp(prefix="impala_jax_multihost_learner_")
  try:
    layouts = [(1, 1)] + [(settings["num_processes"], d) for d in settings["device_counts"]]
    for processes, devices in layouts:
      name = run_name(processes, devices)
      print(f"{processes} process(es) × {devices} device(s)", flush=True)
      runs[name] = multihost_group.run_group(worker_flags, processes, devices,
                                             settings["timeout_seconds"], workdir, name, pids)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  report["runs"] = summarize(runs)
  report["worker_pids"] = pids
  one = report["runs"][run_name(1, 1)]
  # Fitted on the first multi-process run (one device per process by default).
  multi = next(r for n, r in report["runs"].items() if n != run_name(1, 1))
  report["cost_model"] = multihost_model.cost_model(
      one["ms_per_update"], one["samples_per_update"],
      dict(multi["allreduce"], global_devices=multi["global_devices"]),
      multi["update_all_reduce_operands"], settings["model_link_gbps"],
      settings["model_link_latency_us"])
  report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
  return report


def _fmt_bytes(value: Optional[float]) -> Optional[str]:
  return None if value is None else f"{value / 2**20:.2f} MiB"


def _dig(value: Any, keys: Sequence[str]) -> Any:
  for key in keys:
    if not isinstance(value, Mapping) or key not in value:
      return None
    value = value[key]
  return value


def _runs_table(runs: Mapping[str, Any], unroll_length: int) -> List[str]:
  """The runs side by side ("-" where a run has no such number, e.g. no all-reduce alone)."""
  names = list(runs)
  labels = [f"{runs[n]['process_count']} proc, {runs[n]['local_devices']} dev" for n in names]
  get = lambda *keys: [_dig(runs[n], keys) for n in names]
  # Counts as integers ("-" for none), not as the table's 2-decimal numbers.
  count = lambda values: [None if v is None else str(v) for v in values]
  rows = [("global batch (unrolls)",
           count([b // unroll_length for b in get("samples_per_update")])),
          ("samples/s", get("samples_per_second")),
          ("  ÷ 1 process", get("samples_per_second_over_one_process")),
          ("ms/update", get("ms_per_update")),
          ("  ÷ 1 process", get("ms_per_update_over_one_process")),
          ("  stack ms", get("ms_per_update_split", "stack")),
          ("  transfer ms", get("ms_per_update_split", "transfer")),
          ("  update ms", get("ms_per_update_split", "update")),
          ("    less all-reduce", get("update_ms_less_allreduce")),
          ("arrays all-reduced/update", count(get("update_all_reduce_operands"))),
          ("all-reduce ms (flat)", get("allreduce", "ms_flat")),
          ("  median", get("allreduce", "median_ms_flat")),
          ("  share of update", get("allreduce", "share_of_update")),
          ("all-reduce ms (tree)", get("allreduce", "ms_params_tree")),
          ("  median", get("allreduce", "median_ms_params_tree")),
          ("  arrays (leaves)", count(get("allreduce", "operands_params_tree"))),
          ("all-reduce ms (1 float)", get("allreduce", "ms_one_float")),
          ("bytes per all-reduce", [_fmt_bytes(v) for v in get("allreduce", "payload_bytes")]),
          ("  ring bytes sent/device",
           [_fmt_bytes(v) for v in get("allreduce", "ring_bytes_sent_per_device")]),
          ("cores busy (all procs)", get("cores_busy_total"))]
  return report_lib.table("Learner alone vs one learner over several processes "
                          "(gloo, 127.0.0.1)", labels, rows)


def _model_lines(model: Mapping[str, Any]) -> List[str]:
  """The cost model: its inputs, the check, then per link the predictions for each N."""
  check = model["check"]
  lines = [f"Cost model, N hosts with one learner device each: {model['formula']}",
           f"  t1 = {model['t1_ms']:.1f} ms (1 process, measured), S = "
           f"{_fmt_bytes(model['payload_bytes'])}, k = {model['update_all_reduce_operands']}"
           " arrays all-reduced per update",
           f"  check: a lone 1-float all-reduce on {check['devices']} devices, model "
           f"{check['one_float_ms_predicted']:.2f} ms, measured (median) "
           f"{check['one_float_ms_measured']:.2f} ms"]
  hosts = list(next(iter(model["links"].values()))["predictions"])
  for link_name, link in model["links"].items():
    title = (f"{link_name}: alpha = {1000 * link['alpha_ms']:.0f} µs, beta = "
             f"{link['bytes_per_second'] / 1e9:.2f} GB/s")
    p = link["predictions"]
    lines += [""] + report_lib.table(title, [f"N={n}" for n in hosts], [
        ("all-reduce ms", [p[n]["allreduce_ms"] for n in hosts]),
        ("ms/update", [p[n]["ms_per_update"] for n in hosts]),
        ("samples/s", [p[n]["samples_per_second"] for n in hosts]),
        ("efficiency", [p[n]["efficiency"] for n in hosts])])
  return lines


def format_report(report: Mapping[str, Any]) -> str:
  """The printed summary: the runs side by side, then the cost model."""
  s, m = report["settings"], report["machine"]
  lines = [
      f"impala_jax multi-process learner: {s['env']}, {s['network']}, T={s['unroll_length']}, "
      f"{s['batch_size']} unrolls per process, {s['updates']} timed updates",
      f"{m['cpu_count']} CPUs (load {m['load_average_1min_at_start']:.1f} at start, "
      f"{m['load_average_1min_at_end']:.1f} at end), jax {m['versions']['jax']}, {m['date']}",
      ""]
  lines += _runs_table(report["runs"], s["unroll_length"])
  lines += [""] + _model_lines(report["cost_model"])
  return "\n".join(lines)


def _settings(f: flags.FlagValues) -> Dict[str, Any]:
  """The run's settings from the flags; raises ValueError on bad ones before any measuring."""
  device_counts = [int(d) for d in f.device_counts]
  if f.num_processes < 2 or not device_counts or any(d < 1 for d in device_counts):
    raise ValueError("--num_processes must be >= 2 and --device_counts >= 1, got "
                     f"{f.num_processes} and {f.device_counts}.")
  for devices in device_counts:
    multihost_worker.train_config(f.env, f.network, f.image_size, f.unroll_length,
                                  f.batch_size, f.seed).check_devices(devices)
  synthetic.frames_per_step(config_lib.EnvConfig(env_id=f.env))  # Checks the task id.
  return dict(
      env=f.env, network=f.network, image_size=f.image_size, unroll_length=f.unroll_length,
      batch_size=f.batch_size, num_processes=f.num_processes, device_counts=device_counts,
      warmup_updates=f.warmup_updates, updates=f.updates, allreduce_iters=f.allreduce_iters,
      seed=f.seed, timeout_seconds=f.timeout_seconds, model_link_gbps=f.model_link_gbps,
      model_link_latency_us=f.model_link_latency_us)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    settings = _settings(f)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # SIGTERM (a timeout, a scheduler) unwinds like Ctrl-C, so run_group's `finally` reaps the
  # workers instead of leaving them orphaned.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  report = run_benchmark(settings)
  print()
  print(format_report(report))
  report_lib.write_json(f.output, report)
  print(f"Wrote {f.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
