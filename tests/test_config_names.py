"""An unknown name gets one error, worded once (`config_checks.check_one_of`), wherever it is
caught: the config, the network built from a name, the optimizer built from a config."""

import dataclasses

import pytest

from impala_jax import config as config_lib
from impala_jax import networks
from impala_jax.learning import optimizers
from impala_jax.networks import torsos

TORSO_ERROR = ("Unknown network torso 'resnet'; accepted: shallow, nature, deep, mlp.")


@pytest.mark.parametrize("build", [
    lambda: config_lib.NetworkConfig(torso="resnet"),
    lambda: networks.ImpalaNetwork("resnet", num_actions=2),
    lambda: torsos.make_torso("resnet"),
], ids=["config", "network", "make_torso"])
def test_an_unknown_torso_is_named_with_every_accepted_one(build):
  with pytest.raises(ValueError) as error:
    build()
  assert str(error.value) == TORSO_ERROR


def test_an_unknown_optimizer_is_named_wherever_it_is_caught():
  message = "Unknown optimizer 'sgd'; accepted: rmsprop, adam."
  with pytest.raises(ValueError) as error:
    config_lib.OptimizerConfig(optimizer="sgd")
  assert str(error.value) == message
  # A config that skipped its own check (object.__setattr__ past the frozen dataclass).
  bad = config_lib.OptimizerConfig()
  object.__setattr__(bad, "optimizer", "sgd")
  with pytest.raises(ValueError) as error:
    optimizers.make_optimizer(bad, 100)
  assert str(error.value) == message


@pytest.mark.parametrize("field,value,kind", [("objective", "ppo", "objective"),
                                              ("ppo_ratio", "target", "ppo_ratio"),
                                              ("correction", "retrace", "correction")])
def test_unknown_loss_names(field, value, kind):
  with pytest.raises(ValueError, match=rf"^Unknown {kind} '{value}'; accepted: "):
    dataclasses.replace(config_lib.LossConfig(), **{field: value})
