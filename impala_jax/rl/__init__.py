"""Pure math, no state and no IO: V-trace and the paper's other off-policy corrections, the
IMPALA and APPO losses, action distributions.

Everything is time-major (`[T, B, ...]`) and jit-able; the docstrings cite the paper's
equations (Espeholt et al. 2018, arXiv 1802.01561).
"""

from impala_jax.rl.distributions import Categorical
from impala_jax.rl.distributions import DiagGaussian
from impala_jax.rl.distributions import Distribution
from impala_jax.rl.objectives import appo_loss
from impala_jax.rl.objectives import AppoSettings
from impala_jax.rl.objectives import impala_loss
from impala_jax.rl.objectives import ImpalaSettings
from impala_jax.rl.vtrace import VTraceOutput
# `vtrace`, the function, is `impala_jax.rl.vtrace.vtrace` (and `impala_jax.vtrace`): exporting
# it here would hide the module of the same name.
