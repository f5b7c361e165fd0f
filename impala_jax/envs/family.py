"""Which family an environment belongs to: an EnvPool Atari task, another EnvPool task, or
your own (`module.path:factory`, `envs.custom`).

The family decides what applies: the paper's Atari settings and the game's own score over
whole games (`EpisodeTracker`) for Atari, EnvPool's generic settings for the other tasks,
`envs.custom`'s pool for your own. `env_family` is the one place it is decided; everything else
reads it from there or from `EnvSpec.family`.
"""

import difflib
import enum
import functools
from typing import Any, Tuple

import envpool

from impala_jax.envs import custom_copies


class EnvFamily(enum.Enum):
  """An environment's family (module doc)."""

  ATARI = "atari"
  ENVPOOL = "envpool"  # Any EnvPool task but Atari's.
  CUSTOM = "custom"


# Class name of EnvPool's Atari spec. Atari is told by the spec's class rather than the task
# id's spelling: ids such as "Pong-v5" carry no family marker.
ATARI_SPEC_CLASS = "AtariEnvSpec"

# How many close matches an unknown task id error lists.
_NUM_SUGGESTIONS = 5


@functools.lru_cache(maxsize=None)
def _all_env_ids() -> Tuple[str, ...]:
  return tuple(envpool.list_all_envs())


@functools.lru_cache(maxsize=None)
def _default_spec(env_id: str) -> Any:
  return envpool.make_spec(env_id)


def check_env_id(env_id: str) -> None:
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


def env_family(task: Any) -> EnvFamily:
  """The family of an environment id, or of an EnvPool spec (of a built EnvPool environment).

  An id with a ":" names your own environment's factory, `module.path:factory`; any other id
  must be an EnvPool task, whose spec's class tells Atari from the rest.

  Raises:
    ValueError: `task` is an id that is neither (the message lists close matches).
    TypeError: `task` is neither an id nor an EnvPool spec.
  """
  if hasattr(task, "action_array_spec"):  # An EnvPool spec.
    pool_spec = task
  elif isinstance(task, str) and custom_copies.SEPARATOR in task:
    return EnvFamily.CUSTOM
  else:
    check_env_id(task)
    pool_spec = _default_spec(task)
  return EnvFamily.ATARI if type(pool_spec).__name__ == ATARI_SPEC_CLASS else EnvFamily.ENVPOOL
