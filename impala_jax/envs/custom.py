"""Your own environment behind EnvPool's interface: `--env=module.path:factory`.

An environment id with a ":" names a factory, `module.path:attribute`, that returns one
`gymnasium.Env` or one `dm_env.Environment`. The factory takes no argument, or one named
`seed` (an int: copy i of a pool gets `seed + i`, as EnvPool seeds its environments).
`CustomEnvPool` runs N copies behind the subset of EnvPool's API the actor uses
(`async_reset`, `recv`, `send`, `reset`, `step`, `close`, `render`), with EnvPool's
semantics exactly:

* Next-step autoreset. After a copy reports `terminated` or `truncated`, the next `send` for it
  ignores its action and resets it: that result is the first observation of a new episode, with
  reward 0, `terminated = truncated = False` and `info["elapsed_step"] = 0`.
* `terminated` and `truncated` are kept apart and never both true. gymnasium's two flags map
  one to one; a dm_env `LAST` step with discount 0 is `terminated`, with discount > 0
  `truncated`. `max_episode_steps` (when set) truncates at that `elapsed_step`; where both
  would hold, `truncated` wins (EnvPool's `terminated = done & ~truncated`).
* `info["env_id"]` lists the copies of a result, `info["elapsed_step"]` counts the actions
  each copy applied in its episode.
* Stepping is synchronous: no copy steps while the caller thinks. `send` accepts any subset of
  copies that are waiting for an action; `recv` returns the `batch_size` results that were
  ready first (all of them with the default `batch_size = num_envs`), rows sorted by id.

Observation and action spaces (`EnvSpec`): `Box` observations of any shape, float (kept as
is, float64 included) or uint8 (kept: image torsos scale it by 1/255); other integer or bool
Boxes are delivered as float32. A 3-D observation is an image: it is taken as channel-last
`[H, W, C]` (the gymnasium and dm_env convention) and transposed to the `[C, H, W]` that
EnvPool gives and the image torsos expect, unless the environment has an attribute
`channel_first = True`. Actions are `Discrete` (a categorical policy) or a 1-D float `Box`
(a diagonal Gaussian; actions are clipped to its bounds); dm_env's `DiscreteArray`, scalar
integer `BoundedArray` and 1-D float `(Bounded)Array` are the same. Anything else (`Dict`,
`Tuple`, `MultiDiscrete`, `MultiBinary`, nested dm_env specs, ...) fails when the spec is read,
with an error naming the space and what is accepted.

Where the copies run (`num_workers`, which `envs.make_env` takes from `EnvConfig.num_threads`,
the `--env_threads` flag):

* 0 (default): the copies step one after the other in the calling thread (the actor's). A
  Python environment holds the GIL while it steps, so threads cannot step copies in
  parallel, and handing work to them costs more than a cheap step: on the 2-core machine,
  16 corridors (examples.py, about 5 µs a step) run at 170k steps/s in the calling thread,
  46k with a pool of 4 threads. The actor thread already runs beside the learner and the
  inference server.
* K >= 1: K worker processes, each owning a contiguous block of copies. Observations,
  rewards and actions travel through numpy arrays on one memory-mapped file in /dev/shm
  that the pool and its workers share; the sockets carry only the env ids of each command
  (no observation is pickled). `send` returns at once and the workers step in parallel, so
  processes pay when a step costs more than the round trip and there are cores to spare:
  the 16 corridors run at 38k steps/s with 1 worker and 25k with 2 (the round trip
  dominates), while a step that spends 0.3 ms in Python runs at 3.5k steps/s in the calling
  thread, 2.8k with 4 threads and 4.6k with 2 worker processes. A worker is a fresh
  interpreter (`sys.executable`, no fork: safe beside JAX's threads, and no
  `if __name__ == "__main__"` guard needed in the caller) that loads `custom_copies` by its
  path, not JAX; it imports the factory's module, so the factory must be importable there:
  by its `module:attribute` id, or a picklable module-level function.

The directory Python was started from is put on `sys.path` (at its end) before the factory's
module is imported, so `--env=my_sim:make_env` finds `my_sim.py` there.
"""

import collections
import dataclasses
import os
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from impala_jax.envs import custom_copies
from impala_jax.envs import custom_workers
from impala_jax.envs import family as family_lib
from impala_jax.envs import specs
from impala_jax.envs import value_checks
from impala_jax.envs.specs import EnvSpec

Factory = custom_copies.Factory
load_factory = custom_copies.load_factory


def env_spec_of(conversion: custom_copies.Conversion,
                max_episode_steps: Optional[int] = None) -> EnvSpec:
  """The `EnvSpec` of an environment's `Conversion`: what the pool delivers and accepts."""
  low, high = specs.observation_bounds(conversion.observation_low, conversion.observation_high,
                                       conversion.observation_dtype, conversion.transpose)
  ranges = specs.DeclaredRanges(
      observation_low=low, observation_high=high, reward_low=conversion.reward_low,
      reward_high=conversion.reward_high, max_episode_steps=max_episode_steps)
  return EnvSpec(
      observation_shape=tuple(conversion.observation_shape),
      observation_dtype=np.dtype(conversion.observation_dtype),
      discrete=conversion.discrete,
      num_actions=conversion.num_actions,
      action_dim=conversion.action_dim,
      action_low=conversion.action_low,
      action_high=conversion.action_high,
      # What `to_env_action` hands the pool; each copy converts to its environment's dtype.
      action_dtype=np.dtype(np.int32 if conversion.discrete else np.float32),
      family=family_lib.EnvFamily.CUSTOM,
      ranges=ranges)


def with_time_limit(spec: EnvSpec, max_episode_steps: Optional[int]) -> EnvSpec:
  """`spec` with the pool's own time limit declared (the environment's own is not known)."""
  ranges = dataclasses.replace(spec.ranges, max_episode_steps=max_episode_steps)
  return spec._replace(ranges=ranges)


def spec_of(factory: Union[str, Factory], seed: int = 0) -> EnvSpec:
  """The `EnvSpec` of the factory's environments, read from one copy (closed again).

  Raises:
    ValueError: the factory cannot be loaded or called, or its environment has spaces that
      are not supported (the message names them and what is accepted).
  """
  env = custom_copies.make_one(factory, seed)
  try:
    return env_spec_of(custom_copies.conversion_of(env))
  finally:
    env.close()


def _check_layout(num_envs: int, batch_size: int, max_episode_steps: Optional[int],
                  num_workers: int) -> None:
  """Raises ValueError naming the first of `CustomEnvPool`'s arguments out of range."""
  if num_envs < 1:
    raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
  if not 1 <= batch_size <= num_envs:
    raise ValueError(f"batch_size must be in [1, num_envs={num_envs}], got {batch_size}.")
  if max_episode_steps is not None and max_episode_steps < 1:
    raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}.")
  if not 0 <= num_workers <= num_envs:
    raise ValueError(f"num_workers must be in [0, num_envs={num_envs}], got {num_workers}.")


class CustomEnvPool:
  """N copies of a gymnasium or dm_env environment behind EnvPool's API (module docstring).

  Attributes:
    spec: the `EnvSpec` of the copies (what `envs.env_spec(pool)` returns).
    num_envs, batch_size: as in EnvPool.
  """

  def __init__(self, factory: Union[str, Factory], *, num_envs: int,
               batch_size: Optional[int] = None, seed: int = 0,
               max_episode_steps: Optional[int] = None, num_workers: int = 0):
    """Args:
      factory: `module.path:attribute`, or the factory itself (workers need it picklable).
      num_envs: copies.
      batch_size: results per `recv()`; None means num_envs.
      seed: copy i gets `seed + i` (the factory's `seed` argument, and gymnasium's first
        `reset(seed=...)`).
      max_episode_steps: truncate episodes at this many steps (besides the environment's own
        limits); None: no limit of the pool's own.
      num_workers: 0 steps the copies in the calling thread; K >= 1 in K worker processes.
    """
    batch_size = num_envs if batch_size is None else batch_size
    _check_layout(num_envs, batch_size, max_episode_steps, num_workers)
    self.num_envs = num_envs
    self.batch_size = batch_size
    self._name = factory if isinstance(factory, str) else custom_copies.name_of(factory)
    self.num_workers = num_workers
    self._workers: List[custom_workers.WorkerProcess] = []
    self._copies: Optional[custom_copies.Copies] = None
    # Copies whose result is in the buffers and not yet returned by recv(), oldest first.
    self._ready: "collections.deque[int]" = collections.deque()
    # Commands sent to workers and not yet answered, oldest first: (worker, env ids).
    self._in_flight: "collections.deque[Tuple[custom_workers.WorkerProcess, np.ndarray]]" = (
        collections.deque())
    # Which copies wait for an action (their last result was returned by recv or reset).
    self._waiting = np.zeros(num_envs, bool)
    self._closed = False
    if num_workers == 0:
      self._build_in_this_thread(factory, seed, max_episode_steps)
    else:
      self._start_workers(factory, seed, max_episode_steps)

  def _build_in_this_thread(self, factory, seed: int, max_episode_steps: Optional[int]):
    copies = custom_copies.build(factory, range(self.num_envs), seed)
    conversion = custom_copies.conversion_of(copies[0].env)
    self.spec = env_spec_of(conversion, max_episode_steps)
    self._checker = value_checks.ValueChecker(self.spec)
    self._buffers = custom_copies.Buffers(conversion.layout(), self.num_envs)
    self._copies = custom_copies.Copies(copies, 0, self._buffers, seed, max_episode_steps)

  def _start_workers(self, factory, seed: int, max_episode_steps: Optional[int]):
    num_envs, num_workers = self.num_envs, self.num_workers
    probe = custom_copies.make_one(factory, seed)  # Read the spaces, then let workers build.
    try:
      layout = custom_copies.conversion_of(probe).layout()
      self.spec = env_spec_of(custom_copies.conversion_of(probe), max_episode_steps)
      self._checker = value_checks.ValueChecker(self.spec)
    finally:
      probe.close()
    path = custom_workers.shared_file(custom_copies.Buffers.nbytes(layout, num_envs))
    try:
      self._buffers = custom_copies.Buffers(layout, num_envs, path)
      bounds = np.linspace(0, num_envs, num_workers + 1).round().astype(int)
      for k in range(num_workers):
        self._workers.append(custom_workers.WorkerProcess(k, dict(
            factory=factory, env_ids=(int(bounds[k]), int(bounds[k + 1])), seed=seed,
            max_episode_steps=max_episode_steps, layout=layout, num_envs=num_envs,
            path=path)))
      for worker in self._workers:
        worker.wait()  # Built and ready, or the factory's error raised here.
    except BaseException:
      self.close()
      raise
    finally:
      os.unlink(path)  # Every process has it mapped: the memory lives until they unmap it.
    self._owner = np.zeros(num_envs, int)
    for worker in self._workers:
      self._owner[worker.env_ids.start:worker.env_ids.stop] = worker.index
  def __len__(self) -> int:
    return self.num_envs

  def __enter__(self) -> "CustomEnvPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- EnvPool's API -----------------------------------------------------------------------

  def _ids(self, env_ids: Any) -> np.ndarray:
    if env_ids is None:
      return np.arange(self.num_envs, dtype=np.int32)
    ids = np.asarray(env_ids).reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise TypeError(f"env ids must be integers, got {ids.dtype}.")
    ids = ids.astype(np.int32)
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_envs):
      raise ValueError(f"env ids must be in [0, {self.num_envs}), got {ids}.")
    if len(np.unique(ids)) != len(ids):
      raise ValueError(f"env ids must be distinct, got {ids}.")
    return ids

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("The environment pool is closed.")

  def _dispatch(self, command: str, ids: np.ndarray) -> None:
    """Runs `command` ("step" or "reset") for `ids`; their results become ready."""
    if self._copies is not None:
      getattr(self._copies, command)(ids)
      self._ready.extend(ids.tolist())
      return
    owners = self._owner[ids]
    for worker in self._workers:
      mine = ids[owners == worker.index]
      if mine.size:
        worker.send(command, mine)
        self._in_flight.append((worker, mine))

  def _drain(self) -> None:
    while self._in_flight:
      worker, ids = self._in_flight.popleft()
      worker.wait()
      self._ready.extend(ids.tolist())

  def async_reset(self) -> None:
    """Resets every copy; the next `recv()`s return their first observations."""
    self._check_open()
    self._drain()
    self._ready.clear()
    self._waiting[:] = False
    self._dispatch("reset", np.arange(self.num_envs, dtype=np.int32))

  def send(self, action: Any, env_id: Any = None) -> None:
    """Steps the copies `env_id` (default: all) with `action` (`[n]` or `[n, action_dim]`).

    A copy whose last result ended its episode ignores its action and resets (module doc).

    Raises:
      ValueError: a copy that is not waiting for an action (its previous step was not
        received yet), or actions of the wrong shape.
    """
    self._check_open()
    ids = self._ids(env_id)
    if not ids.size:
      return
    if not self._waiting[ids].all():
      raise ValueError(f"Copies {ids[~self._waiting[ids]]} are not waiting for an action: "
                       "recv() their previous result first.")
    action = np.asarray(action)
    expected = self._buffers.action.shape[1:]
    if action.shape != (len(ids),) + expected:
      raise ValueError(f"Expected actions of shape {(len(ids),) + expected} for "
                       f"{len(ids)} copies, got {action.shape}.")
    self._buffers.action[ids] = action
    self._waiting[ids] = False
    self._dispatch("step", ids)

  def recv(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """The `batch_size` results that were ready first: `(obs, reward, terminated, truncated,
    info)`, rows sorted by `info["env_id"]`.

    Raises:
      RuntimeError: fewer than `batch_size` copies are stepping (it would wait forever).
    """
    self._check_open()
    while len(self._ready) < self.batch_size:
      if not self._in_flight:
        raise RuntimeError(f"recv() needs {self.batch_size} results but only "
                           f"{len(self._ready)} copies have stepped: send() actions first "
                           "(or async_reset()).")
      worker, ids = self._in_flight.popleft()
      worker.wait()
      self._ready.extend(ids.tolist())
    ids = np.sort(np.array([self._ready.popleft() for _ in range(self.batch_size)], np.int32))
    self._waiting[ids] = True
    return self._results(ids)

  def _results(self, ids: np.ndarray):
    b = self._buffers
    try:  # Your environment's values enter training here: finite, within what it declares.
      self._checker.env_results(b.observation[ids], b.reward[ids])
    except value_checks.ValueViolation as e:
      raise value_checks.own_environment_error(self._name, e) from None
    info = {"env_id": ids, "elapsed_step": b.elapsed_step[ids],
            "players": {"env_id": ids.copy()}}
    return b.observation[ids], b.reward[ids], b.terminated[ids], b.truncated[ids], info

  def reset(self, env_id: Any = None) -> Tuple[np.ndarray, dict]:
    """Resets the copies `env_id` (default: all) now; returns `(obs, info)` for them."""
    self._check_open()
    ids = self._ids(env_id)
    self._dispatch("reset", ids)
    self._drain()
    # Returned here, not by recv(); results of these copies not yet received are superseded.
    reset_ids = set(ids.tolist())
    self._ready = collections.deque(i for i in self._ready if i not in reset_ids)
    self._waiting[ids] = True
    observation, _, _, _, info = self._results(ids)
    return observation, info

  def step(self, action: Any, env_id: Any = None):
    """`send(action, env_id)` then `recv()`."""
    self.send(action, env_id)
    return self.recv()

  def render(self, env_ids: Any = None) -> np.ndarray:
    """`[n, H, W, 3]` uint8 frames of the copies `env_ids` (default: copy 0), from each
    copy's own `render()` (gymnasium: create it with `render_mode="rgb_array"`)."""
    self._check_open()
    ids = self._ids([0] if env_ids is None else env_ids)
    if self._copies is not None:
      return np.stack([self._copies.render(int(i)) for i in ids])
    self._drain()
    frames = []
    for i in ids:
      worker = self._workers[self._owner[i]]
      worker.send("render", int(i))
      frames.append(np.asarray(worker.wait(), np.uint8))
    return np.stack(frames)

  def close(self) -> None:
    """Closes every copy (and stops the worker processes). Idempotent."""
    if self._closed:
      return
    self._closed = True
    try:
      self._drain()  # Answers still owed, so that each worker's next answer is to "close".
    except RuntimeError:
      pass  # A failed or dead worker: closed below all the same.
    if self._copies is not None:
      self._copies.close()
    for worker in self._workers:
      worker.close()
