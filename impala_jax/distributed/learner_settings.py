"""The settings a remote host must share with its learner, as the learner sends them.

An env host (gRPC) asks the learner for them before it builds its environments
(`env_protocol.SETTINGS_METHOD`); an actor host reads them from the store
(`trajectory_store.RedisStore.read_settings`). Either builds its own config from them, taking
from its flags only what may differ between hosts (environment count, threads, seed). A setting
the host was given explicitly (on its command line or in a flagfile) that differs from the
learner's is refused at connect time, every difference named in one message, instead of the
learner rejecting the host's data message by message.

On the wire: one `wire` message (kind `SETTINGS`) holding UTF-8 JSON of flat fields, parsed with
`json.loads` (never evaluated) and checked field by field (name and type) before the validating
config constructors see the values.
"""

import dataclasses
import json
from typing import Any, Dict, Mapping

import numpy as np

from impala_jax import config as config_lib
from impala_jax.distributed import wire

SETTINGS = 20
MAX_BYTES = 16 * 1024
SCHEMA = (wire.ArraySpec("json", np.uint8, (None,)),)

# The environment settings that must match (an EnvConfig's, less what may differ per host).
ENV_FIELDS = ("env_id", "max_episode_steps", "episodic_life", "reward_clip", "noop_max",
              "stack_num", "frame_skip", "repeat_action_probability", "image_size")
# The acting settings that must match too (an actor host runs the policy and cuts unrolls).
NETWORK_FIELDS = ("torso", "use_lstm", "lstm_size", "mlp_hidden_sizes")
RUN_FIELDS = ("unroll_length", "discount")
# The flag that sets each setting, where its name differs (for messages).
FLAG_NAMES = {"env_id": "env", "torso": "network"}

_INT, _FLOAT, _BOOL, _STR = "int", "float", "bool", "str"
_TYPES = dict(env_id=_STR, max_episode_steps=_INT, episodic_life=_BOOL, reward_clip=_BOOL,
              noop_max=_INT, stack_num=_INT, frame_skip=_INT, repeat_action_probability=_FLOAT,
              image_size=_INT, torso=_STR, use_lstm=_BOOL, lstm_size=_INT,
              mlp_hidden_sizes="ints", unroll_length=_INT, discount=_FLOAT)
_NULLABLE = ("max_episode_steps",)


def of_config(config: config_lib.TrainConfig) -> Dict[str, Any]:
  """The settings of `config` that every host must share."""
  env = {name: getattr(config.env, name) for name in ENV_FIELDS}
  network = {name: getattr(config.network, name) for name in NETWORK_FIELDS}
  network["mlp_hidden_sizes"] = list(network["mlp_hidden_sizes"])
  return dict(env, **network, unroll_length=config.unroll_length,
              discount=config.loss.discount)


def encode(settings: Mapping[str, Any]) -> bytes:
  text = json.dumps(dict(settings), sort_keys=True).encode("utf-8")
  if len(text) > MAX_BYTES:
    raise ValueError(f"The settings take {len(text)} bytes; at most {MAX_BYTES} are sent.")
  return wire.encode(SETTINGS, 0, SCHEMA, dict(json=np.frombuffer(text, np.uint8)))


def _type_ok(kind: str, value: Any) -> bool:
  if kind == _BOOL:
    return isinstance(value, bool)
  if kind == _INT:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind == _FLOAT:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind == _STR:
    return isinstance(value, str) and len(value) <= 256
  return (isinstance(value, list) and len(value) <= 16 and
          all(_type_ok(_INT, v) for v in value))


def decode(payload: bytes) -> Dict[str, Any]:
  """The settings in a SETTINGS message; raises `wire.WireError` on anything else."""
  message = wire.decode(payload, SCHEMA, max_batch=MAX_BYTES)
  if message.kind != SETTINGS:
    raise wire.WireError(f"Expected SETTINGS (kind {SETTINGS}), got kind {message.kind}.")
  try:
    settings = json.loads(message.arrays["json"].tobytes().decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise wire.WireError(f"The settings are not JSON text: {e}") from None
  if not isinstance(settings, dict) or set(settings) != set(_TYPES):
    got = sorted(settings) if isinstance(settings, dict) else type(settings).__name__
    raise wire.WireError(f"The settings hold {got}; expected {sorted(_TYPES)}.")
  for name, kind in _TYPES.items():
    value = settings[name]
    if not (_type_ok(kind, value) or (value is None and name in _NULLABLE)):
      raise wire.WireError(f"Setting {name!r} is {value!r}; expected a {kind}.")
  return settings


def _check_explicit(settings: Mapping[str, Any], explicit: Mapping[str, Any]) -> None:
  """Refuses, naming every one, the explicit settings that differ from the learner's."""
  differ = []
  for name, value in sorted(explicit.items()):
    learner = settings[name]
    if name == "mlp_hidden_sizes":
      value, learner = list(value), list(learner)
    if value != learner:
      flag = FLAG_NAMES.get(name, name)
      differ.append(f"--{flag}={value!r} (the learner's: {learner!r})")
  if differ:
    raise ValueError(
        "This host's settings differ from its learner's: " + ", ".join(differ) + ". Hosts "
        "take these from the learner: drop the flags, or give the learner the same ones.")


def env_config(settings: Mapping[str, Any], base: config_lib.EnvConfig,
               explicit: Mapping[str, Any]) -> config_lib.EnvConfig:
  """`base` (this host's env count, threads, seed) with the learner's environment settings.

  Raises:
    ValueError: an explicit setting differs from the learner's, or the learner's settings
      are not valid here.
  """
  _check_explicit(settings, {k: v for k, v in explicit.items() if k in ENV_FIELDS})
  return dataclasses.replace(base, **{name: settings[name] for name in ENV_FIELDS})


def train_config(settings: Mapping[str, Any], base: config_lib.TrainConfig,
                 explicit: Mapping[str, Any]) -> config_lib.TrainConfig:
  """`base` (an actor host's layout and seed) with every acting setting of the learner's."""
  _check_explicit(settings, explicit)
  network = {name: settings[name] for name in NETWORK_FIELDS}
  network["mlp_hidden_sizes"] = tuple(network["mlp_hidden_sizes"])
  return dataclasses.replace(
      base, env=env_config(settings, base.env, {}),
      network=dataclasses.replace(base.network, **network),
      unroll_length=settings["unroll_length"],
      loss=dataclasses.replace(base.loss, discount=float(settings["discount"])))
