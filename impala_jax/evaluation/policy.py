"""A trained run's policy: its configuration and checkpoint, back into a network and parameters.

    policy = load_policy("runs/pong")              # the latest checkpoint
    policy = load_policy("runs/pong", step=1200)   # checkpoints/1200/

The configuration comes from the checkpoint's own metadata (what `runtime.training` saved with
those parameters), or from `<logdir>/config.json` for a checkpoint without it. The network is
rebuilt exactly as training built it (`envs.env_spec` of the run's `EnvConfig`, then
`networks.network_for_spec`), and the checkpoint is restored into the structure of the
learner's own `TrainState` (parameters, optimizer state, update counter, PopArt's statistics);
only the parameters are kept: acting needs the policy alone, never PopArt's values.

Reading never writes: a run that is still training can be evaluated while it saves (Orbax
finalises a checkpoint by renaming it, and unfinished ones are not listed).
"""

import dataclasses
import json
import os
import typing
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax.learning import optimizers
from impala_jax.learning import update as update_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class RunNotFoundError(FileNotFoundError):
  """The run directory, its checkpoints or the asked-for checkpoint do not exist."""


class Policy(NamedTuple):
  """A trained policy and where it came from.

  Attributes:
    config: the run's `TrainConfig`.
    spec: the training environment's `envs.EnvSpec`.
    network: the `ImpalaNetwork` training used.
    params: its parameters from the checkpoint.
    step: the checkpoint's number (learner updates).
    env_steps: agent steps the learner had consumed at that checkpoint (None if unrecorded).
    logdir: the run directory.
  """

  config: config_lib.TrainConfig
  spec: envs.EnvSpec
  network: networks.ImpalaNetwork
  params: Any
  step: int
  env_steps: Optional[int]
  logdir: str


# Settings of how a run's data arrived, not of what it learned.
_FEEDING_SECTIONS = ("remote_envs", "trajectory_store", "multihost")


def _dataclass_of(field_type: Any) -> Optional[type]:
  """The dataclass in a field's type (`EnvConfig`, `Optional[RemoteEnvConfig]`), or None."""
  if dataclasses.is_dataclass(field_type):
    return field_type
  for arg in typing.get_args(field_type):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def _from_dict(cls: type, values: Mapping[str, Any], where: str) -> Any:
  fields = {f.name for f in dataclasses.fields(cls)}
  types = typing.get_type_hints(cls)  # Resolved even under `from __future__ import annotations`.
  unknown = sorted(set(values) - set(fields))
  if unknown:
    # A run written by another version of the package: its extra settings can't be honoured
    # here; missing ones take today's defaults.
    logging.warning("Ignoring settings unknown to %s in %s: %s.", cls.__name__, where, unknown)
  kwargs = {}
  for name, value in values.items():
    if name not in fields:
      continue
    nested = _dataclass_of(types.get(name))
    if nested is not None and isinstance(value, Mapping):
      value = _from_dict(nested, value, where)
    elif isinstance(value, list):
      value = tuple(value)  # JSON has no tuples; every sequence setting is a tuple.
    kwargs[name] = value
  return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any], where: str = "the config") -> \
    config_lib.TrainConfig:
  """The `TrainConfig` that `dataclasses.asdict` (config.json, checkpoint metadata) wrote.

  How the run was fed (`remote_envs`, `trajectory_store`, `multihost`) does not change what it
  learned: such a section that today's validation rejects (say, a non-loopback `listen` without
  TLS, written before TLS was required there) is left out, with a warning.

  Raises:
    ValueError: a setting the config's validation rejects.
  """
  values = dict(values)
  for name in _FEEDING_SECTIONS:
    section, nested = values.get(name), _dataclass_of(
        typing.get_type_hints(config_lib.TrainConfig)[name])
    if isinstance(section, Mapping):
      try:
        _from_dict(nested, section, where)
      except ValueError as e:
        logging.warning("Leaving out %s of %s, which is not valid today: %s", name, where, e)
        values[name] = None
  return _from_dict(config_lib.TrainConfig, values, where)


def read_config_file(logdir: str) -> config_lib.TrainConfig:
  """`<logdir>/config.json` as a `TrainConfig`."""
  path = os.path.join(logdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunNotFoundError(f"No run configuration: {path} does not exist.")
  with open(path, encoding="utf-8") as f:
    return config_from_dict(json.load(f), path)


def _manager(logdir: str) -> ocp.CheckpointManager:
  if not os.path.isdir(logdir):
    raise RunNotFoundError(f"No run directory: {logdir} does not exist.")
  directory = os.path.join(os.path.abspath(logdir), CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise RunNotFoundError(f"No checkpoints: {directory} does not exist.")
  # create=False and no tmp-directory clean-up: a training run may be saving right now.
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))


def checkpoint_steps(logdir: str) -> List[int]:
  """The complete checkpoints of a run, oldest first."""
  manager = _manager(logdir)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _template(network: networks.ImpalaNetwork, spec: envs.EnvSpec,
              config: config_lib.TrainConfig) -> update_lib.TrainState:
  """The learner's `TrainState` structure (`learning.learner.Learner.__init__`)."""
  params = networks.init_params(network, spec, config.seed)
  optimizer = optimizers.make_optimizer(config.optimizer, config.anneal_optimizer_steps)
  return update_lib.initial_train_state(params, optimizer, config.popart)


def load_policy(logdir: str, step: Optional[int] = None) -> Policy:
  """The policy of checkpoint `step` (default: the latest) of the run in `logdir`.

  Raises:
    RunNotFoundError: no such directory, no checkpoints, no checkpoint `step`, or no
      configuration (neither in the checkpoint nor in config.json).
    ValueError: the checkpoint does not fit the network its configuration describes.
  """
  manager = _manager(logdir)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise RunNotFoundError(f"No complete checkpoint in {manager.directory}.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise RunNotFoundError(
          f"No checkpoint {step} in {manager.directory}; it holds {steps}.")
    metadata: Dict[str, Any] = dict(manager.restore(
        step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"] or {})
    if "config" in metadata:
      config = config_from_dict(metadata["config"], f"checkpoint {step}'s metadata")
    else:
      config = read_config_file(logdir)
    spec = envs.env_spec(config.env)
    network = networks.network_for_spec(config.network, spec,
                                        num_tasks=config.popart.network_tasks)
    template = _template(network, spec, config)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            update_lib.checkpoint_fields(template))
    try:
      restored = manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"Checkpoint {step} in {manager.directory} does not fit the network its "
          f"configuration describes ({config.network}): {e}") from e
  finally:
    manager.close()
  env_steps = metadata.get("env_steps")
  return Policy(config=config, spec=spec, network=network, params=restored["state"]["params"],
                step=int(step), env_steps=None if env_steps is None else int(env_steps),
                logdir=logdir)
