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

from typing import Any, Dict

import envpool

from impala_jax.config import EnvConfig
from impala_jax.envs import family as family_lib


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


def check_games(config: EnvConfig) -> None:
  """Raises a ValueError naming the first game of a multi-task `config` that is not an EnvPool
  Atari task (unknown ids with their closest matches): one network plays them all through
  Atari's full action space, which other families do not share."""
  for task in config.tasks:
    family = family_lib.env_family(task)  # An unknown id fails here, with suggestions.
    if family is not family_lib.EnvFamily.ATARI:
      raise ValueError(
          f"A multi-task run takes Atari games only; {task!r} in --env={config.env_id} is "
          f"not one (its family: {family.value}). Accepted: EnvPool Atari ids separated by "
          "commas, e.g. Pong-v5,Breakout-v5.")


def check_one_task(config: EnvConfig) -> None:
  """Raises a ValueError for a multi-task `config`: a pool plays one game."""
  if config.multi_task:
    raise ValueError(f"A pool plays one game, not {config.env_id!r}: build each game's pool "
                     "from config.task_config(task).")


def envpool_kwargs(config: EnvConfig) -> Dict[str, Any]:
  """The keyword arguments of `envpool.make`/`envpool.make_spec` for `config`, one task's.

  Validates the task id first, so that an unknown id fails with suggestions rather than
  inside EnvPool.

  Raises:
    ValueError: an unknown task id, bad Atari settings, or a multi-task config (a pool plays
      one game: build `config.task_config(task)`).
  """
  if not isinstance(config, EnvConfig):
    raise TypeError(f"Expected an EnvConfig, got {type(config).__name__}.")
  check_one_task(config)
  family_lib.check_env_id(config.env_id)
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
  if family_lib.env_family(config.env_id) is family_lib.EnvFamily.ATARI:
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
        full_action_space=config.full_action_space,
    )
  return kwargs


def make(config: EnvConfig, render: bool = False) -> Any:
  """Builds the gymnasium-API EnvPool environment described by `config`.

  `envs.make_env` is the entry point for every family (its docstring has the details). With
  `render`, the environment's `render()` returns RGB frames (for videos).
  """
  kwargs = envpool_kwargs(config)
  if render:
    kwargs["render_mode"] = "rgb_array"
  return envpool.make(config.env_id, env_type="gymnasium", **kwargs)
