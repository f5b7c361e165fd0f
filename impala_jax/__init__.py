"""impala_jax: IMPALA (Espeholt et al. 2018) with V-trace and SEED-style central inference.

The public API, by role (the path of data: env → actor → inference → queue → learner →
parameters → inference):

    from impala_jax import TrainConfig, train      # configure and run training
    from impala_jax import vtrace, impala_loss     # the math (impala_jax.rl)
    from impala_jax import make_network            # the agent network (impala_jax.networks)
"""

from impala_jax.config import EnvConfig
from impala_jax.config import LossConfig
from impala_jax.config import NetworkConfig
from impala_jax.config import OptimizerConfig
from impala_jax.config import TrainConfig
from impala_jax.networks import make_network
from impala_jax.rl import appo_loss
from impala_jax.rl import AppoSettings
from impala_jax.rl import impala_loss
from impala_jax.rl import ImpalaSettings
from impala_jax.rl.vtrace import vtrace
from impala_jax.runtime.training import train
from impala_jax.runtime.training import TrainingRun
from impala_jax.types import Transitions
from impala_jax.types import Unroll
