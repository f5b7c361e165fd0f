"""The learner's optimizer: global-norm clipping, then RMSProp or Adam, on a linear schedule.

Each setting that changes results is explicit in `config.OptimizerConfig`: where RMSProp's ε
sits (inside the square root, TensorFlow's and the paper's; outside, PyTorch's), Adam's own ε,
and the horizon of the learning-rate decay (a training budget, not the length of this run).
"""

from typing import Union

import optax

from impala_jax import config as config_lib


def learning_rate_schedule(config: config_lib.OptimizerConfig,
                           anneal_steps: int) -> Union[float, optax.Schedule]:
  """The learning rate: constant, or linear from `learning_rate` to 0 over `anneal_steps`.

  Args:
    config: the optimizer settings.
    anneal_steps: optimizer steps over which the rate reaches 0 (see
      `TrainConfig.anneal_optimizer_steps`); later steps stay at 0.
  """
  if not config.anneal_learning_rate:
    return config.learning_rate
  return optax.linear_schedule(config.learning_rate, 0.0, anneal_steps)


def make_optimizer(config: config_lib.OptimizerConfig,
                   anneal_steps: int) -> optax.GradientTransformation:
  """Clipping by global norm (if set), then RMSProp or Adam at `learning_rate_schedule`.

  RMSProp: ms ← decay·ms + (1 − decay)·g², then g / √(ms + ε) (`rmsprop_eps_in_sqrt`) or
  g / (√ms + ε); momentum when `rmsprop_momentum` > 0.
  """
  learning_rate = learning_rate_schedule(config, anneal_steps)
  if config.optimizer == "rmsprop":
    optimizer = optax.rmsprop(learning_rate, decay=config.rmsprop_decay,
                              eps=config.rmsprop_epsilon,
                              eps_in_sqrt=config.rmsprop_eps_in_sqrt,
                              momentum=config.rmsprop_momentum or None)
  elif config.optimizer == "adam":
    optimizer = optax.adam(learning_rate, eps=config.adam_epsilon)
  else:
    config_lib.check_optimizer(config.optimizer)
    raise AssertionError(f"config.OPTIMIZERS lists {config.optimizer!r}, but make_optimizer "
                         "cannot build it.")
  if config.max_grad_norm is None:
    return optimizer
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optimizer)
