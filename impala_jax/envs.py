"""EnvPool construction, environment specs, actions, and real episode scores.

The actor steps one batched EnvPool environment (gymnasium API, version 1.x). Each `step()` or
`recv()` returns `(obs, reward, terminated, truncated, info)` for the environments listed in
`info["env_id"]`, which is all of them when `batch_size == num_envs`, or a subset in
asynchronous mode, where the others keep stepping while the agent thinks.

Two facts about EnvPool that the rest of the package relies on (both checked by
`tests/test_envs.py`):

* Next-step autoreset. After an environment reports `terminated` or `truncated`, its *next*
  step is a reset: the action sent is ignored, the reward is 0, `info["elapsed_step"]` is 0,
  and the observation is the first one of the new episode (see `impala_jax.types`).
  `terminated` and `truncated` are never both true: EnvPool reports
  `terminated = done & ~truncated`.
* Atari with `episodic_life=True` (the paper's training setting, Table G.1). A life loss
  reports `terminated=True`, and the next step is again a reset step (action ignored,
  reward 0), but the game goes on: the lives counter `info["lives"]` drops, the score
  carries over and `info["elapsed_step"]` keeps counting. `info["terminated"]` (int32) is 1
  only at the real game over (no lives left); it is 0 at a life loss and at truncation.
  Truncation (`max_episode_steps`, counted in agent steps over the whole game) restarts the
  whole game. `info["reward"]` is the unclipped game reward; `reward` is `sign(reward)` with
  `reward_clip=True`.

So the learner trains on life-loss episodes and clipped rewards, while `EpisodeTracker` reports
the game's own score over whole games, as the paper's figures do.
"""

import difflib
import functools
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import envpool
import numpy as np

from impala_jax.config import EnvConfig
from impala_jax.types import EpisodeStats

# Class name of EnvPool's Atari spec. Atari is detected through the spec's class rather than
# the task id's spelling: ids such as "Pong-v5" carry no family marker.
_ATARI_SPEC_CLASS = "AtariEnvSpec"

# Observation size of the paper's Atari setting (Table G.1): 84×84 grayscale frames.
_ATARI_IMAGE_SIZE = 84

# How many close matches an unknown task id error lists.
_NUM_SUGGESTIONS = 5


@functools.lru_cache(maxsize=None)
def _all_env_ids() -> Tuple[str, ...]:
  return tuple(envpool.list_all_envs())


def _check_env_id(env_id: str) -> None:
  """Raises a ValueError naming `env_id` and its closest registered tasks if it is unknown."""
  if not isinstance(env_id, str):
    raise TypeError(f"env_id must be a str, got {type(env_id).__name__}: {env_id!r}.")
  all_ids = _all_env_ids()
  if env_id in all_ids:
    return
  matches = difflib.get_close_matches(env_id, all_ids, n=_NUM_SUGGESTIONS)
  if not matches:
    # Case slips ("pong-v5") fall below difflib's cutoff on short ids; retry without case.
    lower_to_id = {task.lower(): task for task in all_ids}
    matches = [lower_to_id[task] for task in difflib.get_close_matches(
        env_id.lower(), list(lower_to_id), n=_NUM_SUGGESTIONS)]
  if matches:
    hint = f"Did you mean: {', '.join(matches)}?"
  else:
    hint = f"envpool.list_all_envs() lists the {len(all_ids)} registered tasks."
  raise ValueError(f"Unknown EnvPool task {env_id!r}. {hint}")


@functools.lru_cache(maxsize=None)
def is_atari(env_id: str) -> bool:
  """Whether `env_id` is one of EnvPool's Atari tasks (judged by its spec class).

  Raises:
    ValueError: `env_id` is not an EnvPool task.
  """
  _check_env_id(env_id)
  return type(envpool.make_spec(env_id)).__name__ == _ATARI_SPEC_CLASS


def _check_atari_settings(config: EnvConfig) -> None:
  # EnvConfig leaves these unchecked because other tasks ignore them; EnvPool would accept
  # some nonsense silently (a negative noop_max) or fail deep inside C++.
  problems = []
  if config.noop_max < 0:
    problems.append(f"noop_max must be >= 0, got {config.noop_max}")
  if config.stack_num < 1:
    problems.append(f"stack_num must be >= 1, got {config.stack_num}")
  if config.frame_skip < 1:
    problems.append(f"frame_skip must be >= 1, got {config.frame_skip}")
  if not 0.0 <= config.repeat_action_probability <= 1.0:
    problems.append("repeat_action_probability must be in [0, 1], got "
                    f"{config.repeat_action_probability}")
  if problems:
    raise ValueError(f"Bad Atari settings for {config.env_id!r}: {'; '.join(problems)}.")


def _envpool_kwargs(config: EnvConfig) -> Dict[str, Any]:
  """The keyword arguments of `envpool.make`/`envpool.make_spec` for `config`.

  Validates the task id first, so that an unknown id fails with suggestions rather than
  inside EnvPool.
  """
  if not isinstance(config, EnvConfig):
    raise TypeError(f"Expected an EnvConfig, got {type(config).__name__}.")
  _check_env_id(config.env_id)
  kwargs = dict(
      num_envs=config.num_envs,
      batch_size=config.recv_batch_size,
      num_threads=config.num_threads,
      seed=config.seed,
  )
  if config.max_episode_steps is not None:
    if config.max_episode_steps < 1:
      raise ValueError(
          f"max_episode_steps must be >= 1 or None, got {config.max_episode_steps}.")
    kwargs["max_episode_steps"] = config.max_episode_steps
  # Only Atari specs know these keys: EnvPool rejects unknown keyword arguments (TypeError),
  # so passing them to CartPole or MuJoCo would fail.
  if is_atari(config.env_id):
    _check_atari_settings(config)
    kwargs.update(
        episodic_life=config.episodic_life,
        reward_clip=config.reward_clip,
        noop_max=config.noop_max,
        stack_num=config.stack_num,
        frame_skip=config.frame_skip,
        repeat_action_probability=config.repeat_action_probability,
        # EnvPool max-pools the last two raw frames of each action repeat before resizing, as
        # in the paper; these make the 84×84 grayscale choice explicit rather than a default.
        img_height=_ATARI_IMAGE_SIZE,
        img_width=_ATARI_IMAGE_SIZE,
        gray_scale=True,
    )
  return kwargs


def make_env(config: EnvConfig) -> Any:
  """Builds the gymnasium-API EnvPool environment described by `config`.

  Atari tasks get the paper's settings from `config` (episodic life, reward clipping, up to 30
  no-ops at reset, stack of 4, action repeat 4, 84×84 grayscale); other tasks get only the
  generic settings. The pool is asynchronous when `config.recv_batch_size < config.num_envs`:
  drive it with `async_reset()`, `recv()` and `send(actions, env_ids)`.

  Args:
    config: the environment configuration.

  Returns:
    The EnvPool environment (its `spec` is an EnvPool spec, see `env_spec`).

  Raises:
    ValueError: unknown task id (the message lists close matches), or bad Atari settings.
    TypeError: `config` is not an `EnvConfig`.
  """
  kwargs = _envpool_kwargs(config)
  return envpool.make(config.env_id, env_type="gymnasium", **kwargs)


class EnvSpec(NamedTuple):
  """What the network builder and the actor need to know about an environment.

  Attributes:
    observation_shape: one environment's observation, e.g. `(4, 84, 84)` (stack, H, W) for
      Atari, `(4,)` for CartPole.
    observation_dtype: numpy dtype of observations (uint8 for Atari, float32/float64 else).
    discrete: whether actions are integers in `[0, num_actions)`.
    num_actions: number of discrete actions; None for continuous actions.
    action_dim: size of a continuous action vector; None for discrete actions.
    action_low: `[action_dim]` lower bounds (float32, read-only); None when discrete.
    action_high: `[action_dim]` upper bounds (float32, read-only); None when discrete.
    action_dtype: numpy dtype EnvPool expects for actions (int32, float32 or float64).
    is_atari: whether the task is an EnvPool Atari task (see `EpisodeTracker`).
  """

  observation_shape: Tuple[int, ...]
  observation_dtype: np.dtype
  discrete: bool
  num_actions: Optional[int]
  action_dim: Optional[int]
  action_low: Optional[np.ndarray]
  action_high: Optional[np.ndarray]
  action_dtype: np.dtype
  is_atari: bool


def _read_only(array: Any) -> np.ndarray:
  array = np.array(array, dtype=np.float32)
  array.setflags(write=False)
  return array


def _spec_from_envpool(pool_spec: Any) -> EnvSpec:
  """Reads an `EnvSpec` from an EnvPool spec (gymnasium spaces plus array specs)."""
  observation_space = pool_spec.observation_space
  action_space = pool_spec.action_space
  if not (hasattr(observation_space, "shape") and observation_space.shape is not None and
          hasattr(observation_space, "dtype") and observation_space.dtype is not None):
    raise ValueError("Only array observations are supported; this task observes "
                     f"{observation_space}.")
  # EnvPool's own record of the action array is the authority on its dtype (gymnasium's
  # Discrete says int64, EnvPool stores int32).
  action_array_spec = getattr(pool_spec, "action_array_spec", {}).get("action")
  space_name = type(action_space).__name__
  if space_name == "Discrete":
    return EnvSpec(
        observation_shape=tuple(observation_space.shape),
        observation_dtype=np.dtype(observation_space.dtype),
        discrete=True,
        num_actions=int(action_space.n),
        action_dim=None,
        action_low=None,
        action_high=None,
        action_dtype=np.dtype(action_array_spec.dtype if action_array_spec else np.int32),
        is_atari=type(pool_spec).__name__ == _ATARI_SPEC_CLASS,
    )
  if space_name == "Box" and len(action_space.shape) == 1:
    return EnvSpec(
        observation_shape=tuple(observation_space.shape),
        observation_dtype=np.dtype(observation_space.dtype),
        discrete=False,
        num_actions=None,
        action_dim=int(action_space.shape[0]),
        action_low=_read_only(action_space.low),
        action_high=_read_only(action_space.high),
        action_dtype=np.dtype(action_array_spec.dtype if action_array_spec
                              else action_space.dtype),
        is_atari=False,
    )
  raise ValueError(f"Only Discrete and 1-D Box action spaces are supported, got {action_space}.")


def env_spec(env_or_config: Union[EnvConfig, Any]) -> EnvSpec:
  """The `EnvSpec` of an `EnvConfig`, a built EnvPool environment, or an EnvPool spec.

  From a config, the spec is built with the same settings `make_env` uses (so `stack_num`
  shows in `observation_shape`) without starting any environment.

  Raises:
    ValueError: unknown task id, or observation/action spaces this package does not handle.
    TypeError: the argument is none of the accepted kinds.
  """
  if isinstance(env_or_config, EnvConfig):
    pool_spec = envpool.make_spec(env_or_config.env_id, **_envpool_kwargs(env_or_config))
  elif hasattr(env_or_config, "action_array_spec"):
    pool_spec = env_or_config
  elif hasattr(getattr(env_or_config, "spec", None), "action_array_spec"):
    pool_spec = env_or_config.spec
  else:
    raise TypeError("env_spec expects an EnvConfig, an EnvPool environment or an EnvPool "
                    f"spec, got {type(env_or_config).__name__}.")
  return _spec_from_envpool(pool_spec)


def to_env_action(actions: Any, spec: EnvSpec) -> np.ndarray:
  """Turns a batch of policy actions into the array EnvPool accepts.

  Discrete actions are checked to lie in `[0, num_actions)`: EnvPool does not check, and an
  out-of-range index would pick an arbitrary ALE action. Continuous actions are clipped to
  `[action_low, action_high]` (the Gaussian policy is unbounded) and cast to `action_dtype`.

  Args:
    actions: `[B]` integers (discrete) or `[B, action_dim]` floats (continuous); numpy or JAX.
    spec: the environment's spec.

  Returns:
    `[B]` int32 or `[B, action_dim]` `spec.action_dtype`, a new numpy array.

  Raises:
    ValueError: wrong shape, out-of-range discrete or non-finite continuous actions.
    TypeError: non-integer discrete actions.
  """
  actions = np.asarray(actions)
  if spec.discrete:
    if actions.ndim != 1:
      raise ValueError(f"Discrete actions must be [batch], got shape {actions.shape}.")
    if not np.issubdtype(actions.dtype, np.integer):
      raise TypeError(f"Discrete actions must be integers, got dtype {actions.dtype}.")
    if actions.size and (actions.min() < 0 or actions.max() >= spec.num_actions):
      raise ValueError(f"Discrete actions must be in [0, {spec.num_actions}), got "
                       f"min {actions.min()} and max {actions.max()}.")
    return actions.astype(spec.action_dtype)
  if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
    raise ValueError(f"Continuous actions must be [batch, {spec.action_dim}], got shape "
                     f"{actions.shape}.")
  if not np.all(np.isfinite(actions)):
    raise ValueError("Continuous actions contain NaN or infinity; the policy has diverged.")
  return np.clip(actions, spec.action_low, spec.action_high).astype(spec.action_dtype)


class EpisodeTracker:
  """Scores finished episodes as the game scores them, for every environment of one pool.

  Feed it every `step()`/`recv()` result, including the first `recv()` after `async_reset()`
  and autoreset steps. Per environment it sums the reward over the episode:

  * Atari: the unclipped `info["reward"]` over the whole game, all lives; a game ends at the
    real game over (`info["terminated"]`) or at truncation, not at a life loss (which training
    with `episodic_life=True` sees as `terminated`).
  * Other tasks: `reward`; an episode ends at `terminated | truncated`.

  Episode length convention: the number of agent steps whose action the environment applied,
  i.e. the transitions of the episode. Reset steps (the autoreset after an end, and on Atari the
  reset after each life loss, whose actions EnvPool ignores) do not count. This is exactly
  EnvPool's `info["elapsed_step"]` at the episode's last step, which is read from there; the
  same counter drives truncation. (Atari frames = length × frame_skip, no-ops excluded.)

  Cost per call: a few vectorised numpy operations on the batch, and a Python loop only over
  the environments that finished.
  """

  def __init__(self, num_envs: int, is_atari: bool):  # pylint: disable=redefined-outer-name
    if num_envs < 1:
      raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    self._num_envs = int(num_envs)
    self._is_atari = bool(is_atari)
    # float64: sums of thousands of rewards must not lose precision.
    self._returns = np.zeros(self._num_envs, np.float64)
    self._num_episodes = 0

  @property
  def num_envs(self) -> int:
    return self._num_envs

  @property
  def num_episodes(self) -> int:
    """Episodes finished since construction."""
    return self._num_episodes

  def update(self, env_ids: Any, reward: Any, terminated: Any, truncated: Any,
             info: Mapping[str, Any]) -> List[EpisodeStats]:
    """Adds one batch of EnvPool results; returns the episodes that finished in it.

    Args:
      env_ids: `[K]` ints, `info["env_id"]`: which environments these results belong to
        (distinct, in `[0, num_envs)`).
      reward: `[K]` the (possibly clipped) training reward.
      terminated: `[K]` bool.
      truncated: `[K]` bool.
      info: EnvPool's info dict; needs `"elapsed_step"`, and on Atari `"reward"` (unclipped)
        and `"terminated"` (real game over).

    Returns:
      One `EpisodeStats` per environment whose episode (Atari: game) ended in this batch, in
      batch order.

    Raises:
      ValueError: mismatched shapes, bad env ids, or missing info fields.
    """
    env_ids = np.asarray(env_ids)
    num_results = env_ids.shape[0] if env_ids.ndim == 1 else -1
    if num_results < 0 or not np.issubdtype(env_ids.dtype, np.integer):
      raise ValueError(f"env_ids must be a 1-D integer array, got {env_ids.dtype} "
                       f"{env_ids.shape}.")
    if num_results == 0:
      return []
    if env_ids.min() < 0 or env_ids.max() >= self._num_envs:
      raise ValueError(f"env_ids must be in [0, {self._num_envs}), got {env_ids}.")
    # Duplicates would silently drop rewards in the fancy-indexed `+=` below.
    if np.bincount(env_ids, minlength=self._num_envs).max() > 1:
      raise ValueError(f"env_ids must be distinct within a batch, got {env_ids}.")
    if self._is_atari:
      missing = [key for key in ("reward", "terminated", "elapsed_step") if key not in info]
    else:
      missing = [key for key in ("elapsed_step",) if key not in info]
    if missing:
      raise ValueError(f"info lacks {missing}; EpisodeTracker(is_atari={self._is_atari}) "
                       "needs EnvPool's info dict.")
    if self._is_atari:
      score = np.asarray(info["reward"])
      ended = np.asarray(info["terminated"]).astype(bool) | np.asarray(truncated, bool)
    else:
      score = np.asarray(reward)
      ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
    elapsed_step = np.asarray(info["elapsed_step"])
    for name, array in (("reward", score), ("ended", ended), ("elapsed_step", elapsed_step)):
      if array.shape != (num_results,):
        raise ValueError(f"{name} must have shape ({num_results},) like env_ids, got "
                         f"{array.shape}.")

    # Reset steps carry reward 0, so adding them needs no mask.
    self._returns[env_ids] += score
    if not ended.any():
      return []
    finished_ids = env_ids[ended]
    finished = [
        EpisodeStats(episode_return=float(self._returns[env_id]), episode_length=int(length))
        for env_id, length in zip(finished_ids, elapsed_step[ended])
    ]
    self._returns[finished_ids] = 0.0
    self._num_episodes += len(finished)
    return finished
