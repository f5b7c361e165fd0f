"""Helpers the measurements share: random inputs shaped like real ones, the network, timing."""

import math
import time
from typing import Any, Callable, List, Tuple

import jax
import numpy as np

from impala_jax import acting
from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.acting import unroll_buffer

# Learner-only random batch: probability that a timestep is terminal, so the masking and
# V-trace's cut paths are exercised as in real data.
_TERMINAL_PROBABILITY = 0.01


def frames_per_step(env_config: config_lib.EnvConfig) -> int:
  """Atari frames per agent step (the action repeat), 1 for other tasks."""
  return env_config.frame_skip if envs.env_family(env_config.env_id) is envs.EnvFamily.ATARI else 1


def network_and_params(config: config_lib.TrainConfig):
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
        task=np.zeros((n, 1), np.int32),
        core_state=core_state))
  return unrolls


def assembled_batch(unrolls: List[types.Unroll]) -> types.Unroll:
  """`unrolls` as the actors' batch assembler lays them out: batch-major, in aligned buffers."""
  batch = acting.stack_unrolls(unrolls)
  return jax.tree.map(_aligned_copy, batch)


def _aligned_copy(x: np.ndarray) -> np.ndarray:
  out = unroll_buffer.aligned_empty(x.shape, x.dtype)
  out[...] = x
  return out


def mean_seconds(fn: Callable[[], Any], iters: int) -> float:
  """Mean wall seconds of `iters` calls of `fn`, which must block until its work is done."""
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters
