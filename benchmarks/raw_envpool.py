"""raw: EnvPool alone with random actions (async send/recv), the machine's limit.

The end-to-end speed is reported as a fraction of this (`report.ratios`).
"""

import threading
import time
from typing import Any, Dict, List

import numpy as np

from benchmarks import synthetic
from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax.acting import actor as actor_lib

# How often the main thread checks that the workers are alive.
_POLL_SECONDS = 0.1


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
  env_configs = actor_lib.env_configs(config, update_step=0)  # The actors' own pools.
  num_pools = len(env_configs)
  spec = envs.env_spec(config.env)
  steps = [0] * num_pools  # Each worker increments only its own slot.
  errors: List[BaseException] = []
  stop = threading.Event()
  # All pools built before the clock starts (building a pool loads ROMs and spawns threads).
  started = threading.Barrier(num_pools + 1)
  threads = [threading.Thread(target=_step_pool, name=f"raw-envpool-{i}", daemon=True,
                              args=(env_configs[i], config.seed, spec, i, steps, errors, stop,
                                    started))
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
      frames_per_second=steps_per_second * synthetic.frames_per_step(config.env),
      window_seconds=end_time - start_time,
      pools=num_pools,
      envs_per_pool=config.env.num_envs,
      recv_batch_size=config.env.recv_batch_size)


def _step_pool(env_config: config_lib.EnvConfig, seed: int, spec: envs.EnvSpec, index: int,
               steps: List[int], errors: List[BaseException], stop: threading.Event,
               started: threading.Barrier) -> None:
  """One worker thread: builds pool `index` (actor thread `index`'s), then steps it with random
  actions (seeded by `seed + index`), counting env steps in `steps[index]`, until `stop`."""
  env = None
  try:
    env = envs.make_env(env_config)
    rng = np.random.default_rng(seed + index)
    env.async_reset()
    started.wait()
    while not stop.is_set():
      _, _, _, _, info = env.recv()
      ids = info["env_id"]
      env.send(synthetic.random_actions(rng, spec, len(ids)), ids)
      steps[index] += len(ids)
  except BaseException as e:  # pylint: disable=broad-except
    errors.append(e)
    started.abort()  # Wake the main thread rather than leave it waiting for this pool.
  finally:
    if env is not None:
      env.close()


def _sleep_checking(seconds: float, errors: List[BaseException]) -> None:
  """Sleeps `seconds`, returning early if a worker has failed."""
  deadline = time.perf_counter() + seconds
  while not errors and time.perf_counter() < deadline:
    time.sleep(min(_POLL_SECONDS, max(deadline - time.perf_counter(), 0.0)))
