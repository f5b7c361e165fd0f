r"""Throughput of impala_jax, measured in one run on one set of settings.

    python benchmarks/throughput.py                          # Pong-v5, paper settings
    python benchmarks/throughput.py --networks=deep --measure=e2e,learner
    python benchmarks/throughput.py --long                   # RSS growth, minute 2 → 10

Five measurements, each a function that returns a dict:

  raw        EnvPool alone with random actions (async send/recv): the machine's limit.
  e2e        the real training system (`runtime.TrainingRun`) for each network: env steps/s after
             warm-up, where the time goes (the `time_*` columns of metrics.csv), and the
             process's RSS and its growth.
  learner    `learner.Learner.step` against a plain jit(value_and_grad) + optax reference on the
             same fixed random batch, same network, parameters, loss and optimizer.
  inference  `inference.InferenceServer` called from one thread at several batch sizes.

It prints a table of absolute numbers and ratios (end-to-end ÷ raw EnvPool, project learner ÷
reference learner) and writes everything, with the machine's description, as JSON to
`--output`. Frames = env steps × frame_skip (4) on Atari only.

Everything runs in this one process, so the RSS figures are this process's: they include what
earlier measurements left behind. For the cleanest memory figure run one network alone,
`--measure=e2e --networks=deep`.
"""

import csv
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import json
import math
import os
import statistics
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import optax
import psutil

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.acting import inference
from impala_jax import learning as learner_lib
from impala_jax.runtime import training as runtime
from impala_jax import types

MEASUREMENTS = ("raw", "e2e", "learner", "inference")

# The e2e runs stop on a timer, never on their step budget. The budget still sets the learning
# rate schedule's length (total_updates); 1e8 updates keeps it far away and inside int32.
_UPDATES_BUDGET = 10**8

# Learner-only: updates run (and compiled) before timing starts.
_LEARNER_WARMUP_ITERS = 2

# Inference-only: calls per batch size before timing starts (the first compiles).
_INFERENCE_WARMUP_CALLS = 2

# Learner-only random batch: probability that a timestep is terminal, so the masking and
# V-trace's cut paths are exercised as in real data.
_TERMINAL_PROBABILITY = 0.01

_MEMORY_WINDOW_SECONDS = 60.0

# --long: the memory-growth run, "RSS growth between minute 2 and minute 10".
_LONG_WINDOW_SECONDS = 600.0
_LONG_MEMORY_FROM_MINUTE = 2.0

# How often the raw EnvPool measurement's main thread checks that its workers are alive, and
# the e2e measurement looks for metrics.csv's first row.
_POLL_SECONDS = 0.1


def define_flags() -> None:
  """Defines this script's flags (at run time only, so that importing it defines none)."""
  flags.DEFINE_list("measure", list(MEASUREMENTS), "Measurements to run: "
                    f"{','.join(MEASUREMENTS)}.")
  flags.DEFINE_list("networks", ["shallow", "deep"], "Torsos for e2e, learner and inference.")
  flags.DEFINE_string("env", "Pong-v5", "EnvPool task id.")
  # The same defaults as experiments/atari.py: chosen from this machine's core count.
  num_actor_threads, num_envs = config_lib.default_actor_layout()
  flags.DEFINE_integer("num_envs", num_envs,
                       "Environments per actor thread (per raw EnvPool pool).")
  flags.DEFINE_integer("num_actor_threads", num_actor_threads,
                       "Actor threads (raw: pools, one per thread).")
  flags.DEFINE_integer("env_threads", 0, "EnvPool worker threads per pool; 0 lets EnvPool "
                       "decide.")
  flags.DEFINE_integer("env_batch_size", 0, "Environments per EnvPool recv(); 0 means "
                       "num_envs.")
  flags.DEFINE_integer("unroll_length", 20, "T, agent steps per unroll.")
  flags.DEFINE_integer("batch_size", 32, "Unrolls per learner update.")
  flags.DEFINE_integer("seed", 0, "Seeds parameters, the random batch and environments.")
  flags.DEFINE_float("warmup_seconds", 30.0, "e2e: seconds since the training run started "
                     "that are left out of the measurement (set-up and compilation happen "
                     "here).")
  flags.DEFINE_float("window_seconds", 20.0, "raw and e2e: seconds measured after warm-up "
                     "(e2e: at most; it ends at the last metrics row).")
  flags.DEFINE_float("raw_warmup_seconds", 3.0, "raw: seconds left out after the pools "
                     "started.")
  flags.DEFINE_float("log_interval_seconds", 2.0, "e2e: seconds between metrics.csv rows.")
  flags.DEFINE_float("memory_from_minute", None, "e2e: RSS growth is measured from the first "
                     "row at or after this minute to the last row; default: the end of "
                     "warm-up.")
  flags.DEFINE_bool("long", False, "The memory-growth run: the e2e window becomes "
                    f"{_LONG_WINDOW_SECONDS:.0f} s and memory_from_minute "
                    f"{_LONG_MEMORY_FROM_MINUTE:.0f} (RSS growth between minute 2 and minute "
                    "10), unless those flags are given explicitly; raw EnvPool keeps "
                    "--window_seconds.")
  flags.DEFINE_integer("learner_iters", 10, "learner: timed updates (after "
                       f"{_LEARNER_WARMUP_ITERS} warm-up updates).")
  flags.DEFINE_list("inference_batch_sizes", ["1", "16", "32", "64"],
                    "inference: environments per call.")
  flags.DEFINE_integer("inference_calls", 100, "inference: timed calls per batch size.")
  flags.DEFINE_string("logdir", "", "e2e: keep each run's metrics.csv, TensorBoard events "
                      "and checkpoint in <logdir>/<network>; empty: a temporary directory, "
                      "deleted afterwards.")
  flags.DEFINE_string("output", "benchmarks/results/throughput.json", "Where the JSON goes.")


# -- helpers ----------------------------------------------------------------------------------


def frames_per_step(env_config: config_lib.EnvConfig) -> int:
  """Atari frames per agent step (the action repeat), 1 for other tasks."""
  return env_config.frame_skip if envs.is_atari(env_config.env_id) else 1


def _with_network(config: config_lib.TrainConfig, torso: str) -> config_lib.TrainConfig:
  return dataclasses.replace(config, network=dataclasses.replace(config.network, torso=torso))


def _network_and_params(config: config_lib.TrainConfig):
  """The network, its initial parameters (the ones a training run starts from) and the spec."""
  spec = envs.env_spec(config.env)
  network = networks.network_for_spec(config.network, spec)
  return network, networks.init_params(network, spec, config.seed), spec


def random_observations(rng: np.random.Generator, spec: envs.EnvSpec,
                        leading_shape: Tuple[int, ...]) -> np.ndarray:
  """`[*leading_shape, *obs_shape]` observations: uniform pixels, or standard normal."""
  shape = tuple(leading_shape) + tuple(spec.observation_shape)
  if spec.observation_dtype == np.uint8:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)
  return rng.standard_normal(shape).astype(np.float32)


def random_actions(rng: np.random.Generator, spec: envs.EnvSpec, n: int) -> np.ndarray:
  """`n` uniformly random actions in the dtype EnvPool expects."""
  if spec.discrete:
    return rng.integers(0, spec.num_actions, size=n).astype(spec.action_dtype)
  return rng.uniform(spec.action_low, spec.action_high,
                     size=(n, spec.action_dim)).astype(spec.action_dtype)


def random_unrolls(spec: envs.EnvSpec, network, batch_size: int, unroll_length: int,
                   seed: int) -> List[types.Unroll]:
  """`batch_size` unrolls as actors emit them: leaves `[T+1, 1, ...]` (see `types.Unroll`).

  Uniform actions with their true log-probability, rewards in {−1, 0, 1}, rare terminal
  steps (each followed by an episode start, as EnvPool's autoreset gives).
  """
  rng = np.random.default_rng(seed)
  n = unroll_length + 1
  core_state = jax.tree.map(np.asarray, network.initial_state(1))
  unrolls = []
  for _ in range(batch_size):
    terminated = rng.random((n, 1)) < _TERMINAL_PROBABILITY
    first = np.zeros((n, 1), bool)
    first[1:] = terminated[:-1]
    if spec.discrete:
      action = rng.integers(0, spec.num_actions, size=(n, 1)).astype(np.int32)
      log_prob = np.full((n, 1), -math.log(spec.num_actions), np.float32)
    else:
      action = rng.standard_normal((n, 1, spec.action_dim)).astype(np.float32)
      # log N(a; 0, I), what a fresh Gaussian policy (log σ = 0) would have recorded.
      log_prob = (-0.5 * np.sum(action**2 + math.log(2 * math.pi), axis=-1)).astype(np.float32)
    unrolls.append(types.Unroll(
        observation=random_observations(rng, spec, (n, 1)),
        reward=rng.integers(-1, 2, size=(n, 1)).astype(np.float32),
        terminated=terminated,
        truncated=np.zeros((n, 1), bool),
        first=first,
        action=action,
        behaviour_log_prob=log_prob,
        policy_version=np.zeros((n, 1), np.int32),
        core_state=core_state))
  return unrolls


def _mean_seconds(fn: Callable[[], Any], iters: int) -> float:
  """Mean wall seconds of `iters` calls of `fn`, which must block until its work is done."""
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
  if numerator is None or not denominator:
    return None
  return numerator / denominator


# -- 1. raw EnvPool ---------------------------------------------------------------------------


def measure_raw_envpool(config: config_lib.TrainConfig, warmup_seconds: float,
                        window_seconds: float) -> Dict[str, Any]:
  """EnvPool alone: one pool per actor thread, random actions, async `recv`/`send`.

  The same pools the actors of `config` build (num_envs, env threads, recv batch size, seeds),
  each stepped by its own Python thread, as the actors do, but with no inference, no
  bookkeeping and no learner: the most env steps/s this machine gives these settings.

  Returns:
    env_steps_per_second and frames_per_second over `window_seconds`, counted after all pools
    have started and `warmup_seconds` have passed.
  """
  num_pools = config.num_actor_threads
  spec = envs.env_spec(config.env)
  steps = [0] * num_pools  # Each worker increments only its own slot.
  errors: List[BaseException] = []
  stop = threading.Event()
  # All pools built before the clock starts (building a pool loads ROMs and spawns threads).
  started = threading.Barrier(num_pools + 1)

  def worker(index: int) -> None:
    env = None
    try:
      env = envs.make_env(dataclasses.replace(
          config.env, seed=config.env.seed + index * config.env.num_envs))
      rng = np.random.default_rng(config.seed + index)
      env.async_reset()
      started.wait()
      while not stop.is_set():
        _, _, _, _, info = env.recv()
        ids = info["env_id"]
        env.send(random_actions(rng, spec, len(ids)), ids)
        steps[index] += len(ids)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)
      started.abort()  # Wake the main thread rather than leave it waiting for this pool.
    finally:
      if env is not None:
        env.close()

  threads = [threading.Thread(target=worker, args=(i,), name=f"raw-envpool-{i}", daemon=True)
             for i in range(num_pools)]
  for thread in threads:
    thread.start()
  try:
    started.wait()
    _sleep_checking(warmup_seconds, errors)
    start_steps, start_time = sum(steps), time.perf_counter()
    _sleep_checking(window_seconds, errors)
    end_steps, end_time = sum(steps), time.perf_counter()
  except threading.BrokenBarrierError:
    pass  # A worker failed; raised below.
  finally:
    stop.set()
    started.abort()  # Frees workers still waiting at the barrier if we are interrupted.
    for thread in threads:
      thread.join()
  if errors:
    raise RuntimeError(f"A raw EnvPool thread failed: {errors[0]!r}") from errors[0]
  steps_per_second = (end_steps - start_steps) / (end_time - start_time)
  return dict(
      env_steps_per_second=steps_per_second,
      frames_per_second=steps_per_second * frames_per_step(config.env),
      window_seconds=end_time - start_time,
      pools=num_pools,
      envs_per_pool=config.env.num_envs,
      recv_batch_size=config.env.recv_batch_size)


def _sleep_checking(seconds: float, errors: List[BaseException]) -> None:
  """Sleeps `seconds`, returning early if a worker has failed."""
  deadline = time.perf_counter() + seconds
  while not errors and time.perf_counter() < deadline:
    time.sleep(min(_POLL_SECONDS, max(deadline - time.perf_counter(), 0.0)))


# -- 2. end-to-end training (and 5. memory) ---------------------------------------------------


def read_metrics_csv(path: str) -> List[Dict[str, Optional[float]]]:
  """The rows of a metrics.csv as floats (None for an empty cell)."""
  with open(path, newline="") as f:
    return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)]


def _first_row_at(rows: Sequence[Mapping[str, Any]], seconds: float) -> Optional[int]:
  return next((i for i, r in enumerate(rows) if r["wall_seconds"] >= seconds), None)


def summarize_metrics(rows: Sequence[Mapping[str, Optional[float]]], warmup_seconds: float,
                      memory_from_seconds: float, frames_per_env_step: int = 1
                      ) -> Dict[str, Any]:
  """Throughput, where the time goes, and memory, from the rows of a run's metrics.csv.

  The measured span runs from the first row at or after `warmup_seconds` (its `wall_seconds`)
  to the last row. Throughput is Δenv_steps / Δwall_seconds over that span. Each row's
  per-interval columns (`time_*` fractions, inference batch size and latency, policy lag)
  describe the interval that ends at that row, so they are averaged over the rows after the
  span's first, weighted by interval length.

  Args:
    rows: metrics.csv rows with floats (`read_metrics_csv`); at least `env_steps`,
      `wall_seconds` and `rss_mb`.
    warmup_seconds: where the measured span starts, on the clock of the rows' `wall_seconds`.
    memory_from_seconds: RSS growth runs from the first row at or after this (same clock) to
      the last row; if no row but the last is that late, from the span's first row.
    frames_per_env_step: 4 on Atari (action repeat), 1 elsewhere.

  Returns:
    A dict; `warning` is set when the run was too short to start the span after warm-up, in
    which case the span is the last two rows.

  Raises:
    ValueError: fewer than two rows.
  """
  if len(rows) < 2:
    raise ValueError(f"metrics.csv has {len(rows)} row(s); throughput needs two. Increase "
                     "--window_seconds or lower --log_interval_seconds.")
  last = len(rows) - 1
  first = _first_row_at(rows, warmup_seconds)
  warning = None
  if first is None or first == last:
    warning = (f"fewer than two metrics rows after warm-up ({warmup_seconds:.0f} s): measured "
               "over the last two rows, which may include compilation; increase "
               "--window_seconds or --warmup_seconds")
    first = last - 1
  span = rows[first:last + 1]
  seconds = span[-1]["wall_seconds"] - span[0]["wall_seconds"]
  env_steps = span[-1]["env_steps"] - span[0]["env_steps"]
  steps_per_second = env_steps / seconds

  def weighted_mean(column: str) -> Optional[float]:
    pairs = [(r[column], r["wall_seconds"] - previous["wall_seconds"])
             for previous, r in zip(span[:-1], span[1:]) if r.get(column) is not None]
    total_weight = sum(w for _, w in pairs)
    if not pairs or total_weight <= 0:
      return None
    return sum(v * w for v, w in pairs) / total_weight

  time_fractions = {c[len("time_"):]: weighted_mean(c) for c in rows[0] if c.startswith("time_")}
  # Each thread's phases should add up to about 1. The runtime credits a phase when the actor's
  # loop iteration ends, so a long block (a full queue while the learner compiles) lands whole
  # in the row where it ends: a window that starts right after compilation can exceed 1.
  time_fraction_totals = {
      role: sum(v for k, v in time_fractions.items() if k.startswith(role + "_") and v)
      for role in ("actor", "learner")}
  memory_first = _first_row_at(rows, memory_from_seconds)
  if memory_first is None or memory_first == last:
    memory_first = first
  # RSS saw-tooths by ±25% within seconds as batches are allocated and freed, so two single
  # rows measure the phase of the saw, not growth: compare means (and peaks) of the rows in a
  # window at each end of the memory span (60 s, or a quarter of a shorter span).
  t_from, t_last = rows[memory_first]["wall_seconds"], rows[last]["wall_seconds"]
  window = min(_MEMORY_WINDOW_SECONDS, (t_last - t_from) / 4)
  rss_start = [r["rss_mb"] for r in rows[memory_first:] if r["wall_seconds"] <= t_from + window]
  rss_end = [r["rss_mb"] for r in rows[memory_first:] if r["wall_seconds"] >= t_last - window]
  rss_from, rss_last = statistics.fmean(rss_start), statistics.fmean(rss_end)
  summary = dict(
      env_steps_per_second=steps_per_second,
      frames_per_second=steps_per_second * frames_per_env_step,
      measured_from_seconds=span[0]["wall_seconds"],
      measured_to_seconds=span[-1]["wall_seconds"],
      measured_env_steps=env_steps,
      measured_rows=len(span),
      # Fractions of each thread's wall time (actors averaged over actor threads).
      time_fractions=time_fractions,
      time_fraction_totals=time_fraction_totals,
      inference_batch_size=weighted_mean("inference_batch_size"),
      inference_latency_ms=weighted_mean("inference_latency_ms"),
      policy_lag=weighted_mean("policy_lag"),
      memory=dict(
          peak_rss_mb=max(r["rss_mb"] for r in rows),
          from_seconds=rows[memory_first]["wall_seconds"],
          to_seconds=rows[last]["wall_seconds"],
          window_seconds=window,
          rss_from_mb=rss_from,  # Means of the rows in the first and last window.
          rss_last_mb=rss_last,
          growth_percent=100.0 * (rss_last - rss_from) / rss_from,
          peak_growth_percent=100.0 * (max(rss_end) - max(rss_start)) / max(rss_start)),
      # The whole run, for plots of throughput and memory over time.
      series={c: [r[c] for r in rows] for c in ("wall_seconds", "env_steps", "rss_mb")})
  if warning:
    summary["warning"] = warning
  return summary


def measure_end_to_end(config: config_lib.TrainConfig, warmup_seconds: float,
                       window_seconds: float, memory_from_seconds: float) -> Dict[str, Any]:
  """Trains for warm-up + window seconds with the real system and summarises metrics.csv.

  `runtime.TrainingRun.run` runs in this (the main) thread, so Ctrl-C stops it cleanly; a
  timer asks it to stop. `config.logdir` must not hold a previous run's checkpoints. All
  times, `warmup_seconds` and `memory_from_seconds` included, count from the call to `run()`.

  Returns:
    `summarize_metrics`'s dict (metrics.csv's `wall_seconds` count from `run()`), plus the
    run's update count and stop reason.
  """
  run = runtime.TrainingRun(config, show_progress=False)
  csv_path = os.path.join(config.logdir, "metrics.csv")
  timer = threading.Timer(warmup_seconds + window_seconds, run.request_stop)
  timer.daemon = True
  timer.start()
  try:
    summary = run.run()
  finally:
    timer.cancel()
  rows = read_metrics_csv(csv_path)
  result = summarize_metrics(rows, warmup_seconds, memory_from_seconds,
                             frames_per_step(config.env))
  result.update(updates=summary.updates, stop_reason=summary.stop_reason)
  return result


# -- 3. learner only --------------------------------------------------------------------------


class ReferenceLearner:
  """The straightforward learner the project's is measured against.

  Same network function (with plain `nn.Conv` layers: `space_to_depth=False`), parameters,
  loss (`learner.make_loss_fn`) and optimizer (`learner.make_optimizer`) as
  `learner.Learner`, written the plain way: the host
  builds a time-major batch with numpy and converts observations to float32 in [0, 1], then one
  `jax.jit(value_and_grad)` + optax update runs; no pmap, no buffer donation.
  """

  def __init__(self, apply_fn, params: Any, config: config_lib.TrainConfig):
    optimizer = learner_lib.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
    loss_fn = learner_lib.make_loss_fn(apply_fn, config.loss)

    def update(params, opt_state, unroll):
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, unroll)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self._update = jax.jit(update)
    self._params = params
    self._opt_state = optimizer.init(params)

  def step(self, unrolls: Sequence[types.Unroll]) -> float:
    """One update on `unrolls` (leaves `[T+1, 1, ...]`); returns the loss before it."""
    # Each unroll is one column of the time-major batch [T+1, B, ...].
    batch = jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=1),
                         *[u._replace(core_state=()) for u in unrolls])
    observation = batch.observation.astype(np.float32)
    if batch.observation.dtype == np.uint8:
      observation /= 255.0  # The network scales only uint8 frames itself.
    core_state = jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=0),
                              *[u.core_state for u in unrolls])
    batch = batch._replace(observation=observation, core_state=core_state)
    self._params, self._opt_state, loss = jax.block_until_ready(
        self._update(self._params, self._opt_state, batch))
    return float(loss)


def measure_learner(config: config_lib.TrainConfig, iters: int) -> Dict[str, Any]:
  """Learner updates per second on one fixed random batch: the project's and the reference.

  Both start from the same list of unrolls (as the actors hand them over), so the timing
  includes each one's host-side batching and transfer. The first loss of each (same parameters,
  same batch) is reported as a check that they compute the same thing.

  Returns:
    samples (agent steps) per second and ms per update for both, the project's split of its
    update time (stack, transfer, update), the ratio project ÷ reference, the first losses.
  """
  network, params, spec = _network_and_params(config)
  unrolls = random_unrolls(spec, network, config.batch_size, config.unroll_length, config.seed)
  samples = config.batch_size * config.unroll_length

  project = learner_lib.Learner(network.apply, params, config)
  # The warm-up updates compile; the first one's loss is the one before any update.
  project_first_loss = project.step(unrolls)["loss"]
  for _ in range(_LEARNER_WARMUP_ITERS - 1):
    project.step(unrolls)
  before = dict(project.seconds)
  project_seconds = _mean_seconds(lambda: project.step(unrolls), iters)
  project_split = {k: 1000.0 * (project.seconds[k] - before[k]) / iters for k in before}
  del project  # Its device buffers, before the reference allocates its own.

  # The reference runs plain nn.Conv layers (same parameters, same function).
  reference = ReferenceLearner(network.clone(space_to_depth=False).apply, params, config)
  reference_first_loss = reference.step(unrolls)
  for _ in range(_LEARNER_WARMUP_ITERS - 1):
    reference.step(unrolls)
  reference_seconds = _mean_seconds(lambda: reference.step(unrolls), iters)
  del reference
  return dict(
      samples_per_update=samples,
      project=dict(samples_per_second=samples / project_seconds,
                   ms_per_update=1000.0 * project_seconds,
                   ms_per_update_split=project_split),
      reference=dict(samples_per_second=samples / reference_seconds,
                     ms_per_update=1000.0 * reference_seconds),
      project_over_reference=reference_seconds / project_seconds,
      # Same parameters, same batch: these differ only by float rounding.
      first_loss=dict(project=project_first_loss, reference=reference_first_loss,
                      relative_difference=abs(project_first_loss - reference_first_loss) /
                      max(abs(reference_first_loss), 1e-12)),
      iters=iters)


# -- 4. inference only ------------------------------------------------------------------------


def measure_inference(config: config_lib.TrainConfig, batch_sizes: Sequence[int],
                      calls: int) -> Dict[str, Any]:
  """`InferenceServer.act` from one thread, `calls` times per batch size.

  The server expects one request per batch (one client), so it never waits for more: each call
  is one policy step on exactly `batch_size` environments.

  Returns:
    Per batch size: samples/s, the mean latency of a call as the client sees it, and the
    server's own latency (policy call and device→host copy).
  """
  network, params, spec = _network_and_params(config)
  rng = np.random.default_rng(config.seed)
  results = {}
  server = inference.InferenceServer(
      network.apply, params, network.initial_state(1), num_envs=max(batch_sizes),
      batch_sizes=batch_sizes, seed=config.seed,
      batch_wait_ms=config.inference_batch_wait_ms, expected_requests=1)
  with server:
    for batch_size in batch_sizes:
      env_ids = np.arange(batch_size, dtype=np.int32)
      observation = random_observations(rng, spec, (batch_size,))
      first = np.zeros((batch_size,), bool)
      act = functools.partial(server.act, env_ids, observation, first)
      for _ in range(_INFERENCE_WARMUP_CALLS):
        act()
      server.stats(reset=True)  # The server's own latency: timed calls only.
      seconds = _mean_seconds(act, calls)
      results[str(batch_size)] = dict(
          samples_per_second=batch_size / seconds,
          latency_ms=1000.0 * seconds,
          server_latency_ms=server.stats().mean_latency_ms)
  return dict(batch_sizes=results, calls=calls)


# -- 6. the machine ---------------------------------------------------------------------------


def machine_info() -> Dict[str, Any]:
  """What the numbers were measured on, and how busy the machine was."""
  return dict(
      cpu_count=os.cpu_count(),
      memory_gb=psutil.virtual_memory().total / 2**30,
      load_average_1min_at_start=os.getloadavg()[0],
      platform=platform.platform(),
      python=platform.python_version(),
      jax_backend=jax.default_backend(),
      jax_devices=[str(d) for d in jax.devices()],
      versions={name: _version(name)
                for name in ("jax", "jaxlib", "flax", "optax", "envpool", "numpy")},
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      command=shlex.join([sys.executable] + sys.argv))


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


# -- the report -------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, str):
    return value
  if not math.isfinite(value):
    return str(value)
  if abs(value) >= 100:
    return f"{value:,.0f}"
  if abs(value) >= 1:
    return f"{value:.2f}"
  return f"{value:.3f}"


def _table(title: str, columns: Sequence[str], rows: Sequence[Tuple[str, Sequence[Any]]]
           ) -> List[str]:
  """A plain-text table: a title, a header of `columns`, then `(label, values)` rows."""
  width = max([len(label) for label, _ in rows] + [0])
  lines = [title, "  " + " " * width + "".join(f"{c:>14}" for c in columns)]
  for label, values in rows:
    lines.append("  " + label.ljust(width) + "".join(f"{_fmt(v):>14}" for v in values))
  return lines


def format_report(report: Mapping[str, Any]) -> str:
  """The printed summary of a `run_benchmarks` report."""
  s, m = report["settings"], report["machine"]
  lines = [
      f"impala_jax throughput: {s['env']}, {s['num_actor_threads']} actor thread(s) × "
      f"{s['num_envs']} envs, T={s['unroll_length']}, B={s['batch_size']}",
      f"{m['cpu_count']} CPUs (load {m['load_average_1min_at_start']:.1f} at start), "
      f"jax {m['versions']['jax']} on {', '.join(m['jax_devices'])}, envpool "
      f"{m['versions']['envpool']}, {m['date']}", ""]
  raw = report.get("raw")
  if raw:
    lines += _table("Raw EnvPool (random actions, async send/recv)", ["env steps/s", "frames/s"],
                    [("", [raw["env_steps_per_second"], raw["frames_per_second"]])])
    lines.append("")
  e2e = report.get("e2e")
  if e2e:
    names = list(e2e)
    phases = sorted({k for r in e2e.values() for k in r["time_fractions"]},
                    key=lambda k: (not k.startswith("actor_"), k))
    rows = [("env steps/s", [e2e[n]["env_steps_per_second"] for n in names]),
            ("frames/s", [e2e[n]["frames_per_second"] for n in names]),
            ("÷ raw EnvPool", [report["ratios"]["end_to_end_over_raw_envpool"].get(n)
                               for n in names]),
            ("÷ learner-only capacity",
             [report["ratios"]["end_to_end_over_learner_only"].get(n) for n in names]),
            ("updates (whole run)", [e2e[n]["updates"] for n in names]),
            ("where the time goes:", [""] * len(names))]
    rows += [(f"  {k}", [e2e[n]["time_fractions"].get(k) for n in names]) for k in phases]
    rows += [(f"  {role} total", [e2e[n]["time_fraction_totals"][role] for n in names])
             for role in ("actor", "learner")]
    rows += [("inference batch size", [e2e[n]["inference_batch_size"] for n in names]),
             ("inference latency ms", [e2e[n]["inference_latency_ms"] for n in names]),
             ("policy lag (updates)", [e2e[n]["policy_lag"] for n in names]),
             ("peak RSS MB", [e2e[n]["memory"]["peak_rss_mb"] for n in names]),
             ("RSS growth % (means)", [e2e[n]["memory"]["growth_percent"] for n in names]),
             ("RSS growth % (peaks)",
              [e2e[n]["memory"]["peak_growth_percent"] for n in names]),
             ("  from minute", [e2e[n]["memory"]["from_seconds"] / 60 for n in names]),
             ("  to minute", [e2e[n]["memory"]["to_seconds"] / 60 for n in names])]
    lines += _table(f"End-to-end training ({s['e2e_window_seconds']:.0f} s after "
                    f"{s['warmup_seconds']:.0f} s warm-up)", names, rows)
    lines += [f"  warning ({n}): {e2e[n]['warning']}" for n in names if "warning" in e2e[n]]
    lines.append("")
  learner = report.get("learner")
  if learner:
    names = list(learner)
    split_keys = list(next(iter(learner.values()))["project"]["ms_per_update_split"])
    rows = [("project samples/s", [learner[n]["project"]["samples_per_second"] for n in names]),
            ("reference samples/s",
             [learner[n]["reference"]["samples_per_second"] for n in names]),
            ("project ÷ reference", [learner[n]["project_over_reference"] for n in names]),
            ("project ms/update", [learner[n]["project"]["ms_per_update"] for n in names])]
    rows += [(f"  {k}", [learner[n]["project"]["ms_per_update_split"][k] for n in names])
             for k in split_keys]
    rows += [("reference ms/update", [learner[n]["reference"]["ms_per_update"] for n in names]),
             ("first loss, project", [learner[n]["first_loss"]["project"] for n in names]),
             ("first loss, reference", [learner[n]["first_loss"]["reference"] for n in names]),
             ("  relative difference",
              [f"{learner[n]['first_loss']['relative_difference']:.1e}" for n in names])]
    lines += _table(f"Learner only ({s['batch_size']} unrolls × {s['unroll_length']} steps, "
                    f"{s['learner_iters']} timed updates)", names, rows)
    lines.append("")
  infer = report.get("inference")
  if infer:
    names = list(infer)
    rows = []
    for size in s["inference_batch_sizes"]:
      per = [infer[n]["batch_sizes"][str(size)] for n in names]
      rows += [(f"batch {size}: samples/s", [p["samples_per_second"] for p in per]),
               ("  latency ms (client)", [p["latency_ms"] for p in per]),
               ("  latency ms (server)", [p["server_latency_ms"] for p in per])]
    lines += _table(f"Inference only (one client thread, {s['inference_calls']} calls per "
                    "size)", names, rows)
    lines.append("")
  return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


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
  report: Dict[str, Any] = dict(settings=dict(settings), machine=machine_info())
  if "raw" in measure:
    print(f"raw EnvPool: {settings['raw_warmup_seconds'] + settings['window_seconds']:.0f} s",
          flush=True)
    report["raw"] = measure_raw_envpool(config, settings["raw_warmup_seconds"],
                                        settings["window_seconds"])
  if "e2e" in measure:
    report["e2e"] = {}
    for name in networks:
      seconds = settings["warmup_seconds"] + settings["e2e_window_seconds"]
      print(f"end-to-end, {name}: {seconds:.0f} s", flush=True)
      run_config = dataclasses.replace(_with_network(config, name),
                                       logdir=os.path.join(logdir, name))
      report["e2e"][name] = measure_end_to_end(
          run_config, settings["warmup_seconds"], settings["e2e_window_seconds"],
          settings["memory_from_seconds"])
      # Let the next run's RSS start from what the process needs, not the last run's caches.
      jax.clear_caches()
      gc.collect()
  if "learner" in measure:
    report["learner"] = {}
    for name in networks:
      print(f"learner only, {name}", flush=True)
      report["learner"][name] = measure_learner(_with_network(config, name),
                                                settings["learner_iters"])
  if "inference" in measure:
    report["inference"] = {}
    for name in networks:
      print(f"inference only, {name}", flush=True)
      report["inference"][name] = measure_inference(
          _with_network(config, name), settings["inference_batch_sizes"],
          settings["inference_calls"])

  raw_speed = report.get("raw", {}).get("env_steps_per_second")
  e2e = report.get("e2e", {})
  learner = report.get("learner", {})
  report["ratios"] = dict(
      end_to_end_over_raw_envpool={
          n: _ratio(r["env_steps_per_second"], raw_speed) for n, r in e2e.items()},
      # How close training gets to what the learner alone could consume (> 1 is impossible
      # in the steady state; ≪ 1 means the actors or the CPU share are the limit).
      end_to_end_over_learner_only={
          n: _ratio(r["env_steps_per_second"],
                    learner.get(n, {}).get("project", {}).get("samples_per_second"))
          for n, r in e2e.items()},
      learner_project_over_reference={
          n: r["project_over_reference"] for n, r in learner.items()})
  report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
  return report


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # The runtime's per-row INFO lines are noise here.
  unknown = sorted(set(f.measure) - set(MEASUREMENTS))
  if unknown:
    raise app.UsageError(f"Unknown --measure {unknown}; accepted: {', '.join(MEASUREMENTS)}.")
  e2e_window_seconds = f.window_seconds
  memory_from_minute = f.memory_from_minute
  if f.long:
    if not f["window_seconds"].present:
      e2e_window_seconds = _LONG_WINDOW_SECONDS
    if not f["memory_from_minute"].present:
      memory_from_minute = _LONG_MEMORY_FROM_MINUTE
  memory_from_seconds = (f.warmup_seconds if memory_from_minute is None
                         else 60.0 * memory_from_minute)
  try:
    config = config_lib.TrainConfig(
        env=config_lib.EnvConfig(env_id=f.env, num_envs=f.num_envs,
                                 batch_size=f.env_batch_size or None,
                                 num_threads=f.env_threads, seed=f.seed),
        network=config_lib.NetworkConfig(),
        num_actor_threads=f.num_actor_threads, unroll_length=f.unroll_length,
        batch_size=f.batch_size, 
        total_env_steps=_UPDATES_BUDGET * f.batch_size * f.unroll_length, seed=f.seed,
        checkpoint_interval_minutes=1e9,  # Only the final one, after the window.
        log_interval_seconds=f.log_interval_seconds)
    config.check_devices(jax.local_device_count())
    for name in f.networks:
      config_lib.NetworkConfig(torso=name)  # Fail now, not after minutes of measuring.
    inference_batch_sizes = [int(b) for b in f.inference_batch_sizes]
    frames_per_env_step = frames_per_step(config.env)  # Also checks the task id.
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  settings = dict(
      env=f.env, num_envs=f.num_envs, num_actor_threads=f.num_actor_threads,
      env_threads=f.env_threads, env_batch_size=config.env.recv_batch_size,
      unroll_length=f.unroll_length, batch_size=f.batch_size, networks=list(f.networks),
      measure=list(f.measure), warmup_seconds=f.warmup_seconds,
      window_seconds=f.window_seconds, e2e_window_seconds=e2e_window_seconds,
      raw_warmup_seconds=f.raw_warmup_seconds, log_interval_seconds=f.log_interval_seconds,
      memory_from_seconds=memory_from_seconds, learner_iters=f.learner_iters,
      inference_batch_sizes=inference_batch_sizes, inference_calls=f.inference_calls,
      frames_per_env_step=frames_per_env_step, seed=f.seed)

  logdir = f.logdir or tempfile.mkdtemp(prefix="impala_jax_throughput_")
  try:
    report = run_benchmarks(config, f.measure, f.networks, settings, logdir)
  finally:
    if not f.logdir:
      shutil.rmtree(logdir, ignore_errors=True)
  print()
  print(format_report(report))
  os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
  with open(f.output, "w") as out:
    json.dump(report, out, indent=2)
  print(f"Wrote {f.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
