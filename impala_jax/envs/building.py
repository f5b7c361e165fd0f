"""Any environment by its `EnvConfig`, and any environment's `EnvSpec`: the family dispatch.

The entry points for every family (`envs.make_env`, `envs.env_spec`): EnvPool tasks are built
by `envpool_envs`, your own environments (`module.path:factory`) by `custom`; `env_family`
says which.
"""

from typing import Any, Union

import envpool

from impala_jax.config import EnvConfig
from impala_jax.envs import custom
from impala_jax.envs import envpool_envs
from impala_jax.envs import family as family_lib
from impala_jax.envs import specs


def make_env(config: EnvConfig, render: bool = False) -> Any:
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
    render: make `render(env_ids)` return `[n, H, W, 3]` RGB frames (for videos). A custom
      environment renders through its own `render()` either way (create it with
      `render_mode="rgb_array"`).

  Returns:
    The EnvPool environment (its `spec` is an EnvPool spec, see `env_spec`).

  Raises:
    ValueError: unknown task id (the message lists close matches), bad Atari settings, or
      several games (a pool plays one: `config.task_config(task)`).
    TypeError: `config` is not an `EnvConfig`.
  """
  if not isinstance(config, EnvConfig):
    raise TypeError(f"Expected an EnvConfig, got {type(config).__name__}.")
  envpool_envs.check_one_task(config)
  if family_lib.env_family(config.env_id) is family_lib.EnvFamily.CUSTOM:
    return custom.CustomEnvPool(
        config.env_id, num_envs=config.num_envs, batch_size=config.recv_batch_size,
        seed=config.seed, max_episode_steps=config.max_episode_steps,
        num_workers=config.num_threads)
  return envpool_envs.make(config, render=render)


def env_spec(env_or_config: Union[EnvConfig, Any]) -> specs.EnvSpec:
  """The `EnvSpec` of an `EnvConfig`, a built EnvPool environment, or an EnvPool spec.

  From a config, the spec is built with the same settings `make_env` uses (so `stack_num`
  shows in `observation_shape`) without starting any environment. A multi-task config's spec
  is every game's (`EnvConfig.task_config`: the same frames, Atari's 18 actions), with
  `num_tasks` set, once each game is checked to be an EnvPool Atari task. A custom environment
  (`module.path:factory`, see `envs.custom`) is read from one copy built and closed again;
  a built `custom.CustomEnvPool` (or an `EnvSpec`) gives its own.

  Raises:
    ValueError: unknown task id, or observation/action spaces this package does not handle;
      a multi-task config with a game that is not Atari's.
    TypeError: the argument is none of the accepted kinds.
  """
  if isinstance(env_or_config, EnvConfig) and env_or_config.multi_task:
    envpool_envs.check_games(env_or_config)
    spec = env_spec(env_or_config.task_config(0))
    return spec._replace(num_tasks=env_or_config.num_tasks)
  if isinstance(env_or_config, specs.EnvSpec):
    return env_or_config
  if isinstance(getattr(env_or_config, "spec", None), specs.EnvSpec):  # A CustomEnvPool.
    return env_or_config.spec
  if isinstance(env_or_config, EnvConfig):
    if family_lib.env_family(env_or_config.env_id) is family_lib.EnvFamily.CUSTOM:
      spec = custom.spec_of(env_or_config.env_id, env_or_config.seed)
      return custom.with_time_limit(spec, env_or_config.max_episode_steps)
    pool_spec = envpool.make_spec(env_or_config.env_id,
                                  **envpool_envs.envpool_kwargs(env_or_config))
  elif hasattr(env_or_config, "action_array_spec"):
    pool_spec = env_or_config
  elif hasattr(getattr(env_or_config, "spec", None), "action_array_spec"):
    pool_spec = env_or_config.spec
  else:
    raise TypeError("env_spec expects an EnvConfig, an EnvPool environment, an EnvPool spec "
                    f"or a custom environment pool, got {type(env_or_config).__name__}.")
  return specs.spec_from_envpool(pool_spec)
