r"""Throughput of impala_jax, measured in one run on one set of settings.

    python benchmarks/throughput.py                          # Pong-v5, paper settings
    python benchmarks/throughput.py --networks=deep --measure=e2e,learner
    python benchmarks/throughput.py --long                   # RSS growth, minute 2 → 10
    python -m benchmarks.throughput ...                      # the same

Each measurement is a function in its own module that returns a dict:

  raw        `raw_envpool`: EnvPool alone with random actions, the machine's limit.
  e2e        `end_to_end`: the real training system for each network, with the process's
             RSS and its growth (`memory`).
  learner    `learner_only`: the project's learner against a plain reference learner.
  inference  `inference_only`: the inference server at several batch sizes.
  pipeline   `pipeline`: the host's own CPU per agent step, by stage, through the real actor →
             inference → queue → learner path with synthetic environments and a nearly free
             network, at an accelerator's layout (`--pipeline_layout`, 8 threads × 32 envs).

This module is only the command line. The training flags are `experiments/common.py`'s, with
experiments/atari.py's Pong defaults (`--helpfull` lists them); the rest are the benchmark's.
It prints `report.format_report`'s table of absolute numbers and ratios and writes everything,
with the machine's description, as JSON to `--output`.

Everything runs in this one process, so the RSS figures are this process's: they include what
earlier measurements left behind. For the cleanest memory figure run one network alone,
`--measure=e2e --networks=deep`.
"""

import dataclasses
import gc
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Mapping, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax

from impala_jax import config as config_lib

# Run as a script, the repository root is not on the path: add it for `benchmarks.*` and
# `experiments.common`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import end_to_end
from benchmarks import inference_only
from benchmarks import learner_only
from benchmarks import pipeline
from benchmarks import raw_envpool
from benchmarks import report as report_lib
from benchmarks import synthetic
from experiments import common
# pylint: enable=g-import-not-at-top,wrong-import-position

MEASUREMENTS = ("raw", "e2e", "learner", "inference", "pipeline")

# The e2e runs stop on a timer, never on their step budget: 1e8 updates' worth of agent steps
# keeps it far away. (The learning-rate schedule's length is `--anneal_env_steps`, not this.)
_UPDATES_BUDGET = 10**8

# --long: the memory-growth run, "RSS growth between minute 2 and minute 10".
_LONG_WINDOW_SECONDS = 600.0
_LONG_MEMORY_FROM_MINUTE = 2.0

# common's help for these describes a training run; here they mean something else.
_HELP_HERE = dict(
    logdir="e2e: keep each run's metrics.csv, TensorBoard events and checkpoint in "
    "<logdir>/<network>; empty: a temporary directory, deleted afterwards.",
    network="Not used here: --networks lists the torsos to measure.",
    total_env_steps="Not used here: the e2e runs stop on a timer.",
    checkpoint_interval_minutes="Not used here: only the final checkpoint is written.",
    progress="Not used here: the e2e runs show no progress bar.")


def define_flags() -> None:
  """Defines this script's flags (at run time only, so that importing it defines none)."""
  num_actor_threads, num_envs = config_lib.default_actor_layout()
  common.define_flags(dict(
      env="Pong-v5",
      total_env_steps=50_000_000,  # Replaced: see _UPDATES_BUDGET.
      logdir="",
      num_envs=num_envs,  # Per actor thread (per raw EnvPool pool); as experiments/atari.py.
      num_actor_threads=num_actor_threads,
      unroll_length=20,
      batch_size=32,
      learning_rate=6e-4,
      network="shallow",
      log_interval_seconds=2.0,
  ))
  for name, text in _HELP_HERE.items():
    flags.FLAGS[name].help = text
  flags.DEFINE_list("measure", [m for m in MEASUREMENTS if m != "pipeline"],
                    f"Measurements to run: {','.join(MEASUREMENTS)}.")
  flags.DEFINE_list("networks", ["shallow", "deep"], "Torsos for e2e, learner and inference.")
  flags.DEFINE_float("warmup_seconds", 30.0, "e2e: seconds after the run's first metrics row "
                     "that are left out of the measurement (set-up and compilation happen "
                     "before that row, however long they take).")
  flags.DEFINE_float("first_row_deadline_seconds", 600.0, "e2e: stop with an error when the "
                     "run has written no metrics row by then.")
  flags.DEFINE_float("window_seconds", 20.0, "raw and e2e: seconds measured after warm-up "
                     "(e2e: at most; it ends at the last metrics row).")
  flags.DEFINE_float("raw_warmup_seconds", 3.0, "raw: seconds left out after the pools "
                     "started.")
  flags.DEFINE_float("memory_from_minute", None, "e2e: RSS growth is measured from the first "
                     "row at or after this minute to the last row; default: the end of "
                     "warm-up.")
  flags.DEFINE_bool("long", False, "The memory-growth run: the e2e window becomes "
                    f"{_LONG_WINDOW_SECONDS:.0f} s and memory_from_minute "
                    f"{_LONG_MEMORY_FROM_MINUTE:.0f} (RSS growth between minute 2 and minute "
                    "10), unless those flags are given explicitly; raw EnvPool keeps "
                    "--window_seconds.")
  flags.DEFINE_integer("learner_iters", 10, "learner: timed updates (after "
                       f"{learner_only.WARMUP_ITERS} warm-up updates).")
  flags.DEFINE_list("inference_batch_sizes", ["1", "16", "32", "64"],
                    "inference: environments per call.")
  flags.DEFINE_integer("inference_calls", 100, "inference: timed calls per batch size.")
  flags.DEFINE_string("pipeline_layout", "8x32", "pipeline: actor threads x envs per thread "
                      "(an accelerator host's default layout; the recv batch is --env_batch_size).")
  flags.DEFINE_float("pipeline_warmup_seconds", 10.0, "pipeline: seconds left out first.")
  flags.DEFINE_string("output", "benchmarks/results/throughput.json", "Where the JSON goes.")


def _with_network(config: config_lib.TrainConfig, torso: str) -> config_lib.TrainConfig:
  return dataclasses.replace(config, network=dataclasses.replace(config.network, torso=torso))


def run_benchmarks(config: config_lib.TrainConfig, measure: Sequence[str],
                   networks: Sequence[str], settings: Mapping[str, Any],
                   logdir: str) -> Dict[str, Any]:
  """Runs the selected measurements; returns the report (settings, machine, results, ratios).

  Args:
    config: the training configuration every measurement shares (its network is replaced
      by each of `networks`).
    measure: a subset of `MEASUREMENTS`.
    networks: torsos to measure.
    settings: the measurement settings (durations, sizes), recorded in the report.
    logdir: e2e runs go to `<logdir>/<network>`.
  """
  report: Dict[str, Any] = dict(settings=dict(settings), machine=report_lib.machine_info())
  if "raw" in measure:
    print(f"raw EnvPool: {settings['raw_warmup_seconds'] + settings['window_seconds']:.0f} s",
          flush=True)
    report["raw"] = raw_envpool.measure_raw_envpool(config, settings["raw_warmup_seconds"],
                                                    settings["window_seconds"])
  if "e2e" in measure:
    report["e2e"] = {}
    for name in networks:
      seconds = settings["warmup_seconds"] + settings["e2e_window_seconds"]
      print(f"end-to-end, {name}: {seconds:.0f} s", flush=True)
      run_config = dataclasses.replace(_with_network(config, name),
                                       logdir=os.path.join(logdir, name))
      report["e2e"][name] = end_to_end.measure_end_to_end(
          run_config, settings["warmup_seconds"], settings["e2e_window_seconds"],
          settings["memory_from_seconds"], settings["first_row_deadline_seconds"])
      # Let the next run's RSS start from what the process needs, not the last run's caches.
      jax.clear_caches()
      gc.collect()
  if "learner" in measure:
    report["learner"] = {}
    for name in networks:
      print(f"learner only, {name}", flush=True)
      report["learner"][name] = learner_only.measure_learner(_with_network(config, name),
                                                             settings["learner_iters"])
  if "inference" in measure:
    report["inference"] = {}
    for name in networks:
      print(f"inference only, {name}", flush=True)
      report["inference"][name] = inference_only.measure_inference(
          _with_network(config, name), settings["inference_batch_sizes"],
          settings["inference_calls"])
  if "pipeline" in measure:
    print(f"pipeline: {settings['pipeline_warmup_seconds'] + settings['window_seconds']:.0f} s",
          flush=True)
    report["pipeline"] = pipeline.measure_pipeline(
        pipeline_config(config, settings["pipeline_layout"]),
        settings["pipeline_warmup_seconds"], settings["window_seconds"])
  report["ratios"] = report_lib.ratios(report)
  report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
  return report


def pipeline_config(config: config_lib.TrainConfig, layout: str) -> config_lib.TrainConfig:
  """`config` with the actor layout `layout` ("THREADSxENVS", e.g. "8x32")."""
  try:
    threads, num_envs = (int(n) for n in layout.lower().split("x"))
  except ValueError:
    raise ValueError(f"--pipeline_layout must be THREADSxENVS, e.g. 8x32; got {layout!r}.")
  env = dataclasses.replace(config.env, num_envs=num_envs,
                            batch_size=min(config.env.recv_batch_size, num_envs))
  return dataclasses.replace(config, env=env, num_actor_threads=threads)


def _config_and_settings() -> Tuple[config_lib.TrainConfig, Dict[str, Any]]:
  """The shared training config and the settings the report records, from the flags.

  The config is common's, with what the benchmark owns replaced (its `logdir` is set per run
  by `main` and `run_benchmarks`). Invalid values raise ValueError.
  """
  f = flags.FLAGS
  e2e_window_seconds = f.window_seconds
  memory_from_minute = f.memory_from_minute
  if f.long:
    if not f["window_seconds"].present:
      e2e_window_seconds = _LONG_WINDOW_SECONDS
    if not f["memory_from_minute"].present:
      memory_from_minute = _LONG_MEMORY_FROM_MINUTE
  # None: from the end of the warm-up, which follows the run's first metrics row.
  memory_from_seconds = None if memory_from_minute is None else 60.0 * memory_from_minute
  config = common.config_from_flags()
  config = dataclasses.replace(
      config, total_env_steps=_UPDATES_BUDGET * config.steps_per_update,
      checkpoint_interval_minutes=1e9)  # Only the final one, after the window.
  config.check_devices(jax.local_device_count())
  for name in f.networks:
    _with_network(config, name)  # Fail now, not after minutes of measuring.
  pipeline_config(config, f.pipeline_layout)
  inference_batch_sizes = [int(b) for b in f.inference_batch_sizes]
  frames_per_env_step = synthetic.frames_per_step(config.env)  # Also checks the task id.
  settings = dict(
      env=f.env, num_envs=f.num_envs, num_actor_threads=f.num_actor_threads,
      env_threads=f.env_threads, env_batch_size=config.env.recv_batch_size,
      unroll_length=f.unroll_length, batch_size=f.batch_size, networks=list(f.networks),
      measure=list(f.measure), warmup_seconds=f.warmup_seconds,
      window_seconds=f.window_seconds, e2e_window_seconds=e2e_window_seconds,
      raw_warmup_seconds=f.raw_warmup_seconds, log_interval_seconds=f.log_interval_seconds,
      memory_from_seconds=memory_from_seconds, learner_iters=f.learner_iters,
      inference_batch_sizes=inference_batch_sizes, inference_calls=f.inference_calls,
      frames_per_env_step=frames_per_env_step, seed=f.seed,
      first_row_deadline_seconds=f.first_row_deadline_seconds,
      pipeline_layout=f.pipeline_layout, pipeline_warmup_seconds=f.pipeline_warmup_seconds)
  return config, settings


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # The runtime's per-row INFO lines are noise here.
  unknown = sorted(set(f.measure) - set(MEASUREMENTS))
  if unknown:
    raise app.UsageError(f"Unknown --measure {unknown}; accepted: {', '.join(MEASUREMENTS)}.")
  try:
    config, settings = _config_and_settings()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  logdir = f.logdir or tempfile.mkdtemp(prefix="impala_jax_throughput_")
  try:
    report = run_benchmarks(dataclasses.replace(config, logdir=logdir), f.measure, f.networks,
                            settings, logdir)
  finally:
    if not f.logdir:
      shutil.rmtree(logdir, ignore_errors=True)
  print()
  print(report_lib.format_report(report))
  report_lib.write_json(f.output, report)
  print(f"Wrote {f.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
