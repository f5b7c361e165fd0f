"""Environments: EnvPool tasks by id, their specs and action format, and real game scores.

An id `module.path:factory` is your own gymnasium or dm_env environment instead, batched
behind EnvPool's interface by `envs.custom` (`envs.examples` has one). `EnvFamily` tells the
three apart (`env_family`, `EnvSpec.family`).

Its modules import one way, bottom to top: `custom_copies` (imports nothing of the package);
`family`; `envpool_envs`, `specs`; `value_checks`, `scoring`; `custom_workers`, `custom`;
`building` (`make_env`, `env_spec`).
"""

from impala_jax.envs import atari_scores
from impala_jax.envs.building import env_spec
from impala_jax.envs.building import make_env
from impala_jax.envs.family import env_family
from impala_jax.envs.family import EnvFamily
from impala_jax.envs.scoring import EpisodeTracker
from impala_jax.envs.specs import DeclaredRanges
from impala_jax.envs.specs import EnvSpec
from impala_jax.envs.specs import to_env_action
