"""Environments: EnvPool tasks by id, their specs and action format, and real game scores.

An id `module.path:factory` is your own gymnasium or dm_env environment instead, batched
behind EnvPool's interface by `envs.custom` (`envs.examples` has one).
"""

from impala_jax.envs import atari_scores
from impala_jax.envs.envpool_envs import is_atari
from impala_jax.envs.envpool_envs import make_env
from impala_jax.envs.scoring import EpisodeTracker
from impala_jax.envs.specs import DeclaredRanges
from impala_jax.envs.specs import env_spec
from impala_jax.envs.specs import EnvSpec
from impala_jax.envs.specs import to_env_action
