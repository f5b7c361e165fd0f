"""EnvPool tasks by id: construction with the paper's Atari settings.

The actor steps one batched EnvPool environment (gymnasium API, version 1.x). Each `step()` or
`recv()` returns `(obs, reward, terminated, truncated, info)` for the environments listed in
`info["env_id"]`, which is all of them when `batch_size == num_envs`, or a subset in
asynchronous mode, where the others keep stepping while the agent thinks.

Two facts about EnvPool that the rest of the package relies on (both checked by
`tests/envs/`):

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
from typing import Any, Dict, Tuple

import envpool

from impala_jax.config import EnvConfig


# Class name of EnvPool's Atari spec (also read by `specs`). Atari is detected through the
# spec's class rather than the task id's spelling: ids such as "Pong-v5" carry no family marker.
ATARI_SPEC_CLASS = "AtariEnvSpec"

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

  A custom environment (`module.path:factory`, see `envs.custom`) is not Atari.

  Raises:
    ValueError: `env_id` is not an EnvPool task.
  """
  if custom_id(env_id):
    return False
  _check_env_id(env_id)
  return type(envpool.make_spec(env_id)).__name__ == ATARI_SPEC_CLASS


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


def envpool_kwargs(config: EnvConfig) -> Dict[str, Any]:
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
        # in the paper; these make the image size (the paper's 84×84) and grayscale explicit.
        img_height=config.image_size,
        img_width=config.image_size,
        gray_scale=True,
    )
  return kwargs


def make_env(config: EnvConfig) -> Any:
  """Builds the gymnasium-API EnvPool environment described by `config`.

  An id `module.path:factory` builds a `custom.CustomEnvPool` of that factory's environments
  instead (same API and semantics; `config.num_threads` is its number of worker processes,
  0 for none; the Atari settings do not apply).

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
  if isinstance(config, EnvConfig) and custom_id(config.env_id):
    return _make_custom_env(config)
  kwargs = envpool_kwargs(config)
  return envpool.make(config.env_id, env_type="gymnasium", **kwargs)


def custom_id(env_id: Any) -> bool:
  """Whether `env_id` names an environment factory, `module.path:factory` (`envs.custom`)."""
  return isinstance(env_id, str) and ":" in env_id


def _make_custom_env(config: EnvConfig) -> Any:
  # Imported here: `custom` imports `specs`, which imports this module.
  from impala_jax.envs import custom  # pylint: disable=g-import-not-at-top
  return custom.CustomEnvPool(
      config.env_id, num_envs=config.num_envs, batch_size=config.recv_batch_size,
      seed=config.seed, max_episode_steps=config.max_episode_steps,
      num_workers=config.num_threads)
