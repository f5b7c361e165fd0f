"""The copies of a custom environment: spaces, conversions, episodes, and the worker process.

The part of `envs.custom` that runs where the copies live: in the pool's own thread, or in a
worker process. It imports nothing from `impala_jax`, so that a worker process can load this
package alone (`custom_workers` does, by path) without importing JAX: a worker starts in well
under a second and holds only numpy, gymnasium, dm_env and the environment's own module. For
the same reason its modules import each other by relative names: loaded by path, the package
has a name of its own, not `impala_jax.envs.custom_copies`.

Its modules, bottom to top:

  factories           `module.path:factory` ids, and one environment from a factory
  conversion          `Conversion`: what the pool delivers for an environment, and how
  gymnasium_adapter   a `gymnasium.Env`'s spaces, reset and step, in those terms
  dm_env_adapter      a `dm_env.Environment`'s specs, reset and step, in those terms
  environment         `Copy`: one environment behind whichever adapter fits it
  batching            `Buffers` and `Copies`: a pool's arrays and EnvPool's episode semantics
                      (next-step autoreset, terminated vs truncated, `elapsed_step`)
  process             `worker_process`, the main of a worker process
"""

from .batching import Buffers
from .batching import Copies
from .conversion import ACCEPTED_ACTIONS
from .conversion import ACCEPTED_OBSERVATIONS
from .conversion import Conversion
from .environment import build
from .environment import conversion_of
from .environment import Copy
from .factories import Factory
from .factories import load_factory
from .factories import make_one
from .factories import name_of
from .factories import resolve
from .factories import SEPARATOR
from .process import worker_process
