"""The copies of a custom environment: spaces, conversions, episodes, and the worker process.

The part of `envs.custom` that runs where the copies live: in the pool's own thread, or in a
worker process. It imports nothing from `impala_jax`, so that a worker process can load this
file alone (`custom.CustomEnvPool` does, by path) without importing JAX: a worker starts in
well under a second and holds only numpy, gymnasium, dm_env and the environment's own module.

`Copies` holds the episode logic that makes a gymnasium or dm_env environment behave like one
of EnvPool's (next-step autoreset, terminated vs truncated, `elapsed_step`); `Buffers` are the
arrays its results go to (memory-mapped and shared with the pool in a worker process).
"""

import importlib
import inspect
import os
import signal
import sys
import traceback
from multiprocessing import connection
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import dm_env
from dm_env import specs as dm_specs
import gymnasium
import numpy as np

SEPARATOR = ":"

Factory = Callable[..., Any]

ACCEPTED_OBSERVATIONS = ("Box observations of any shape, float or uint8 (dm_env: one Array "
                         "or BoundedArray)")
ACCEPTED_ACTIONS = ("Discrete or 1-D float Box actions, for the categorical and diagonal-"
                    "Gaussian policies (dm_env: DiscreteArray, a scalar integer BoundedArray "
                    "or a 1-D float Array/BoundedArray)")


# ------------------------------------------------------------------------------------------
# Factories.


def load_factory(env_id: str) -> Factory:
  """Imports the factory named by `module.path:attribute` (dots in the attribute descend).

  The current directory is added to the end of `sys.path` first, so that a script run from
  the directory of `my_sim.py` finds `my_sim:make_env`.

  Raises:
    ValueError: a malformed id, a module that cannot be imported, a missing attribute, or
      one that is not callable.
  """
  module_name, _, attribute = env_id.partition(SEPARATOR)
  if not module_name or not attribute or SEPARATOR in attribute:
    raise ValueError(f"A custom environment id is 'module.path:factory', got {env_id!r}.")
  cwd = os.getcwd()
  if cwd not in sys.path:
    sys.path.append(cwd)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"Cannot import module {module_name!r} of environment {env_id!r}: {e}. "
                     "It must be importable (installed, on PYTHONPATH, or in the current "
                     "directory).") from e
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"Module {module_name!r} has no attribute {attribute!r} (environment "
                       f"{env_id!r}).")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"{env_id!r} is not callable: the environment factory must be a function "
                     "or class returning a gymnasium.Env or a dm_env.Environment.")
  return target


def resolve(factory: Union[str, Factory]) -> Factory:
  return load_factory(factory) if isinstance(factory, str) else factory


def name_of(factory: Factory) -> str:
  return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', factory)}"


def _takes_seed(factory: Factory) -> bool:
  try:
    parameters = inspect.signature(factory).parameters
  except (TypeError, ValueError):  # No signature to read (some builtins): call it bare.
    return False
  if "seed" in parameters:
    return True
  required = [p.name for p in parameters.values() if p.default is p.empty and
              p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  if required:
    raise ValueError(f"The environment factory {name_of(factory)} must take no argument or one "
                     f"named 'seed'; it requires {required}.")
  return False


def make_one(factory: Union[str, Factory], seed: int) -> Any:
  """One environment from `factory`, passing `seed=seed` if it takes a `seed`."""
  factory = resolve(factory)
  env = factory(seed=seed) if _takes_seed(factory) else factory()
  if not isinstance(env, (gymnasium.Env, dm_env.Environment)):
    raise ValueError(f"The environment factory {name_of(factory)} returned "
                     f"{type(env).__name__}; expected a gymnasium.Env or a dm_env.Environment "
                     "(an old `gym` environment needs porting to gymnasium).")
  return env


# ------------------------------------------------------------------------------------------
# Spaces and conversions.


class Conversion(NamedTuple):
  """What the pool delivers for one environment, and how its values are converted.

  Attributes:
    observation_shape, observation_dtype: one observation as delivered (`[C, H, W]` for
      images).
    discrete, num_actions: a categorical action in `[0, num_actions)` ...
    action_low, action_high: ... or a float vector within these bounds (float32).
    raw_observation_shape: the environment's own observation shape.
    transpose: `[H, W, C]` → `[C, H, W]`.
    action_offset: added to discrete actions (gymnasium's `Discrete(start=...)`, a dm_env
      `BoundedArray`'s minimum).
    env_action_dtype: the dtype the environment takes actions in.
    observation_low, observation_high: the observation space's bounds, as the environment
      declares them (raw layout; None: none declared).
    reward_low, reward_high: a dm_env reward spec's bounds (gymnasium declares none).
  """

  observation_shape: Tuple[int, ...]
  observation_dtype: np.dtype
  discrete: bool
  num_actions: Optional[int]
  action_low: Optional[np.ndarray]
  action_high: Optional[np.ndarray]
  raw_observation_shape: Tuple[int, ...]
  transpose: bool
  action_offset: int
  env_action_dtype: np.dtype
  observation_low: Any = None
  observation_high: Any = None
  reward_low: float = -float("inf")
  reward_high: float = float("inf")

  @property
  def action_dim(self) -> Optional[int]:
    return None if self.discrete else int(self.action_low.shape[0])

  def layout(self) -> dict:
    """The plain fields `Buffers` needs (what a worker process is sent)."""
    return dict(observation_shape=tuple(self.observation_shape),
                observation_dtype=np.dtype(self.observation_dtype).str,
                discrete=self.discrete, action_dim=self.action_dim,
                num_actions=self.num_actions)


def _observation_dtype(dtype: Any, space: Any) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype == np.uint8 or np.issubdtype(dtype, np.floating):
    return dtype
  if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
    return np.dtype(np.float32)
  raise ValueError(f"Unsupported observation dtype {dtype} of {space}; accepted: "
                   f"{ACCEPTED_OBSERVATIONS}.")


def _channel_first(env: Any) -> bool:
  return bool(getattr(env, "channel_first", False) or
              getattr(getattr(env, "unwrapped", None), "channel_first", False))


def _conversion(env, raw_shape, dtype, space, *, num_actions=None, low=None, high=None,
                action_offset=0, env_action_dtype=None, declared=None) -> Conversion:
  """`declared`: (observation low, observation high, reward low, reward high), or None."""
  raw_shape = tuple(int(s) for s in raw_shape)
  transpose = len(raw_shape) == 3 and not _channel_first(env)
  shape = (raw_shape[2], raw_shape[0], raw_shape[1]) if transpose else raw_shape
  discrete = num_actions is not None
  if not discrete:
    low, high = np.array(low, np.float32), np.array(high, np.float32)
    low.setflags(write=False)
    high.setflags(write=False)
  declared = declared or (None, None, -float("inf"), float("inf"))
  return Conversion(shape, _observation_dtype(dtype, space), discrete,
                    int(num_actions) if discrete else None, None if discrete else low,
                    None if discrete else high, raw_shape, transpose, int(action_offset),
                    np.dtype(env_action_dtype), *declared)


def _gymnasium_conversion(env: gymnasium.Env) -> Conversion:
  spaces = gymnasium.spaces
  observation_space, action_space = env.observation_space, env.action_space
  if not isinstance(observation_space, spaces.Box):
    hint = (" Flatten it (gymnasium.wrappers.FlattenObservation) or pick the array you need."
            if isinstance(observation_space, (spaces.Dict, spaces.Tuple)) else "")
    raise ValueError(f"Unsupported observation space {observation_space} "
                     f"({type(observation_space).__name__}); accepted: "
                     f"{ACCEPTED_OBSERVATIONS}.{hint}")
  args = (env, observation_space.shape, observation_space.dtype, observation_space)
  declared = (observation_space.low, observation_space.high, -float("inf"), float("inf"))
  if isinstance(action_space, spaces.Discrete):
    return _conversion(*args, num_actions=action_space.n, action_offset=action_space.start,
                       env_action_dtype=np.int64, declared=declared)
  if (isinstance(action_space, spaces.Box) and len(action_space.shape) == 1 and
      np.issubdtype(action_space.dtype, np.floating)):
    return _conversion(*args, low=action_space.low, high=action_space.high,
                       env_action_dtype=action_space.dtype, declared=declared)
  raise ValueError(f"Unsupported action space {action_space} ({type(action_space).__name__}); "
                   f"accepted: {ACCEPTED_ACTIONS}.")


def _dm_env_conversion(env: dm_env.Environment) -> Conversion:
  observation_spec, action_spec = env.observation_spec(), env.action_spec()
  if not isinstance(observation_spec, dm_specs.Array):
    raise ValueError(f"Unsupported observation spec {observation_spec!r} "
                     f"({type(observation_spec).__name__}); accepted: "
                     f"{ACCEPTED_OBSERVATIONS}. Return one array (concatenate the parts).")
  args = (env, observation_spec.shape, observation_spec.dtype, observation_spec)
  declared = _dm_env_declared(env, observation_spec)
  if isinstance(action_spec, dm_specs.DiscreteArray):
    return _conversion(*args, num_actions=action_spec.num_values,
                       env_action_dtype=action_spec.dtype, declared=declared)
  if isinstance(action_spec, dm_specs.Array):
    dtype = np.dtype(action_spec.dtype)
    if (isinstance(action_spec, dm_specs.BoundedArray) and action_spec.shape == () and
        np.issubdtype(dtype, np.integer)):
      low, high = int(action_spec.minimum), int(action_spec.maximum)
      return _conversion(*args, num_actions=high - low + 1, action_offset=low,
                         env_action_dtype=dtype, declared=declared)
    if len(action_spec.shape) == 1 and np.issubdtype(dtype, np.floating):
      size = action_spec.shape[0]
      if isinstance(action_spec, dm_specs.BoundedArray):
        low = np.broadcast_to(action_spec.minimum, (size,))
        high = np.broadcast_to(action_spec.maximum, (size,))
      else:
        low, high = np.full((size,), -np.inf), np.full((size,), np.inf)
      return _conversion(*args, low=low, high=high, env_action_dtype=dtype, declared=declared)
  raise ValueError(f"Unsupported action spec {action_spec!r} ({type(action_spec).__name__}); "
                   f"accepted: {ACCEPTED_ACTIONS}.")


def _dm_env_declared(env: dm_env.Environment, observation_spec: Any) -> tuple:
  """(observation low, high, reward low, high) from a dm_env's bounded specs."""
  low = high = None
  if isinstance(observation_spec, dm_specs.BoundedArray):
    low = np.broadcast_to(observation_spec.minimum, observation_spec.shape)
    high = np.broadcast_to(observation_spec.maximum, observation_spec.shape)
  reward_spec = env.reward_spec()
  reward_low, reward_high = -float("inf"), float("inf")
  if isinstance(reward_spec, dm_specs.BoundedArray) and reward_spec.shape == ():
    reward_low, reward_high = float(reward_spec.minimum), float(reward_spec.maximum)
  return low, high, reward_low, reward_high


def conversion_of(env: Any) -> Conversion:
  """Reads the spaces of one gymnasium or dm_env environment.

  Raises:
    ValueError: spaces this package does not handle (the message names them and what is
      accepted).
  """
  if isinstance(env, gymnasium.Env):
    return _gymnasium_conversion(env)
  if isinstance(env, dm_env.Environment):
    return _dm_env_conversion(env)
  raise ValueError(f"Expected a gymnasium.Env or a dm_env.Environment, got "
                   f"{type(env).__name__}.")


class Copy:
  """One environment, with its observations and actions converted to the pool's formats."""

  def __init__(self, env: Any, conversion: Conversion):
    self.env = env
    self._conversion = conversion
    self._gymnasium = isinstance(env, gymnasium.Env)

  def observation(self, observation: Any) -> np.ndarray:
    conversion = self._conversion
    observation = np.asarray(observation)
    if observation.shape != conversion.raw_observation_shape:
      raise ValueError(f"{type(self.env).__name__} returned an observation of shape "
                       f"{observation.shape}; its space says "
                       f"{conversion.raw_observation_shape}.")
    if conversion.transpose:
      observation = np.transpose(observation, (2, 0, 1))
    return observation.astype(conversion.observation_dtype, copy=False)

  def action(self, action: np.ndarray) -> Any:
    conversion = self._conversion
    if conversion.discrete:
      action = int(action) + conversion.action_offset
      return action if self._gymnasium else np.asarray(action, conversion.env_action_dtype)
    # A copy: the row is a view of the pool's action buffer, which the next send overwrites.
    return np.array(action, conversion.env_action_dtype)

  def reset(self, seed: Optional[int]) -> np.ndarray:
    if self._gymnasium:
      observation, _ = self.env.reset(seed=seed)
      return self.observation(observation)
    return self.observation(self.env.reset().observation)

  def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, bool]:
    """(observation, reward, terminated, truncated) as the environment reports them."""
    if self._gymnasium:
      observation, reward, terminated, truncated, _ = self.env.step(self.action(action))
      return self.observation(observation), float(reward), bool(terminated), bool(truncated)
    timestep = self.env.step(self.action(action))
    reward = 0.0 if timestep.reward is None else float(np.asarray(timestep.reward))
    terminated = truncated = False
    if timestep.last():
      # dm_env: discount 0 ends the episode for good; > 0 is a cut-off (a time limit).
      discount = None if timestep.discount is None else float(np.asarray(timestep.discount))
      if discount is not None and not 0.0 <= discount <= 1.0:  # NaN fails too.
        raise ValueError(f"{type(self.env).__name__} ended an episode with discount "
                         f"{discount}; a discount must be a finite number in [0, 1].")
      terminated = discount is None or discount == 0.0
      truncated = not terminated
    return self.observation(timestep.observation), reward, terminated, truncated

  def render(self) -> np.ndarray:
    render = getattr(self.env, "render", None)
    frame = render() if render is not None else None
    if frame is None:
      raise ValueError(f"{type(self.env).__name__}.render() returned no RGB array: create the "
                       "environment with render_mode='rgb_array' to record videos.")
    return np.asarray(frame, np.uint8)

  def close(self) -> None:
    self.env.close()


def build(factory: Union[str, Factory], env_ids: range, seed: int) -> List[Copy]:
  """Copies `env_ids` of `factory`, copy i made with `seed + i`; closed again on error."""
  factory = resolve(factory)
  copies: List[Copy] = []
  try:
    conversion = None
    for env_id in env_ids:
      env = make_one(factory, seed + env_id)
      try:
        conversion = conversion or conversion_of(env)
      except BaseException:
        env.close()
        raise
      copies.append(Copy(env, conversion))
  except BaseException:
    for copy in copies:
      copy.close()
    raise
  return copies


# ------------------------------------------------------------------------------------------
# Results and episodes.


class Buffers:
  """A pool's result and action arrays `[num_envs, ...]`, in memory or on a shared file.

  With `path`, every array is a view of one memory-mapped file (the pool puts it on /dev/shm,
  i.e. in RAM, where there is one): the pool and its worker processes map the same file.
  """

  _ALIGN = 64

  def __init__(self, layout: dict, num_envs: int, path: Optional[str] = None):
    mapped = None
    if path is not None:
      mapped = np.memmap(path, np.uint8, mode="r+", shape=(self.nbytes(layout, num_envs),))
    offset = 0
    for name, (shape, dtype) in self.fields(layout, num_envs).items():
      size = int(np.prod(shape)) * dtype.itemsize
      if mapped is None:
        array = np.zeros(shape, dtype)
      else:
        array = mapped[offset:offset + size].view(dtype).reshape(shape)
      offset += self._aligned(size)
      setattr(self, name, array)

  @staticmethod
  def fields(layout: dict, num_envs: int) -> dict:
    action_shape = (num_envs,) if layout["discrete"] else (num_envs, layout["action_dim"])
    return dict(observation=((num_envs,) + tuple(layout["observation_shape"]),
                             np.dtype(layout["observation_dtype"])),
                reward=((num_envs,), np.dtype(np.float32)),
                terminated=((num_envs,), np.dtype(np.bool_)),
                truncated=((num_envs,), np.dtype(np.bool_)),
                elapsed_step=((num_envs,), np.dtype(np.int32)),
                action=(action_shape, np.dtype(np.int32 if layout["discrete"] else
                                               np.float32)))

  @classmethod
  def _aligned(cls, size: int) -> int:
    return -(-size // cls._ALIGN) * cls._ALIGN

  @classmethod
  def nbytes(cls, layout: dict, num_envs: int) -> int:
    return sum(cls._aligned(int(np.prod(shape)) * dtype.itemsize)
               for shape, dtype in cls.fields(layout, num_envs).values())


class Copies:
  """Copies `[offset, offset + len(copies))` of a pool: resets, steps, next-step autoresets.

  Each call handles the listed copies (global ids) one after the other, reading their actions
  from `buffers.action` and writing their results to `buffers` (EnvPool's semantics, see
  `envs.custom`).
  """

  def __init__(self, copies: List[Copy], offset: int, buffers: Buffers, seed: int,
               max_episode_steps: Optional[int]):
    self._copies = copies
    self._offset = offset
    self._buffers = buffers
    self._seed = seed
    self._max_episode_steps = max_episode_steps
    n = len(copies)
    self._seeded = np.zeros(n, bool)
    self._ended = np.zeros(n, bool)
    self._elapsed = np.zeros(n, np.int64)

  def _reset_one(self, env_id: int) -> None:
    local = env_id - self._offset
    seed = None
    if not self._seeded[local]:  # Seeded once; later episodes continue its random stream.
      seed = self._seed + env_id
      self._seeded[local] = True
    observation = self._copies[local].reset(seed)
    self._ended[local] = False
    self._elapsed[local] = 0
    self._write(env_id, observation, 0.0, False, False, 0)

  def _write(self, env_id, observation, reward, terminated, truncated, elapsed) -> None:
    b = self._buffers
    b.observation[env_id] = observation
    b.reward[env_id] = reward
    b.terminated[env_id] = terminated
    b.truncated[env_id] = truncated
    b.elapsed_step[env_id] = elapsed

  def reset(self, env_ids: Sequence[int]) -> None:
    for env_id in env_ids:
      self._reset_one(int(env_id))

  def step(self, env_ids: Sequence[int]) -> None:
    for env_id in env_ids:
      env_id = int(env_id)
      local = env_id - self._offset
      if self._ended[local]:  # Next-step autoreset: the action is ignored.
        self._reset_one(env_id)
        continue
      observation, reward, terminated, truncated = self._copies[local].step(
          self._buffers.action[env_id])
      self._elapsed[local] += 1
      elapsed = int(self._elapsed[local])
      if self._max_episode_steps is not None and elapsed >= self._max_episode_steps:
        truncated = True
      terminated = terminated and not truncated  # EnvPool's rule: never both.
      self._ended[local] = terminated or truncated
      self._write(env_id, observation, reward, terminated, truncated, elapsed)

  def render(self, env_id: int) -> np.ndarray:
    return self._copies[env_id - self._offset].render()

  def close(self) -> None:
    errors = []
    for copy in self._copies:
      try:
        copy.close()
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
    if errors:
      raise errors[0]


# ------------------------------------------------------------------------------------------
# The worker process.


def worker_process(fd: int) -> None:
  """A worker's main: builds its copies, then answers commands until "close" or EOF.

  The socket `fd` carries one init dict (factory, env id range, seed, max_episode_steps,
  layout, shared file), then `(command, argument)` pairs, each answered with
  `("ok", value)` or `("error", traceback)`, in order.
  """
  # Ctrl-C in a terminal reaches the whole process group; the pool's owner decides when its
  # workers stop (it may be saving a checkpoint), and EOF on the socket ends them anyway.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  conn = connection.Connection(fd)
  copies = None
  try:
    init = conn.recv()
    env_ids = range(*init["env_ids"])
    buffers = Buffers(init["layout"], init["num_envs"], init["path"])
    built = build(init["factory"], env_ids, init["seed"])
    copies = Copies(built, env_ids.start, buffers, init["seed"], init["max_episode_steps"])
    layout = conversion_of(built[0].env).layout()
    if layout != init["layout"]:
      raise ValueError(f"The worker's environments differ from the pool's: {layout} vs "
                       f"{init['layout']}.")
    conn.send(("ok", None))
    while True:
      command, argument = conn.recv()
      if command == "step":
        copies.step(argument)
        conn.send(("ok", None))
      elif command == "reset":
        copies.reset(argument)
        conn.send(("ok", None))
      elif command == "render":
        conn.send(("ok", copies.render(argument)))
      elif command == "close":
        closing, copies = copies, None
        closing.close()
        conn.send(("ok", None))
        return
      else:
        raise ValueError(f"Unknown command {command!r}.")
  except EOFError:  # The pool's owner is gone.
    pass
  except BaseException:  # pylint: disable=broad-except
    try:
      conn.send(("error", traceback.format_exc()))
    except (OSError, EOFError):
      pass
  finally:
    if copies is not None:
      try:
        copies.close()
      except Exception:  # pylint: disable=broad-except
        pass
    conn.close()
