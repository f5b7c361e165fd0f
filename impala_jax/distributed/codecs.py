"""Unrolls and parameters as `wire` messages, with schemas built from what the receiver knows.

The receiver never takes a sender's word for a layout: it builds the schema from its own
environment spec, unroll length and network (`unroll_schema`, `params_schema`), and
`wire.decode` rejects anything else (dtype, shape, byte size). Pytrees travel as their leaves
in `jax.tree` order, named by position. An actor host's unrolls and episode records carry its
host id in the message's sequence field, so the learner can count their faults per host.
The values themselves are the receiver's to check (`envs.value_checks`).

An unroll's task id (`types.Unroll.task`) does not travel: remote hosts play the run's one
task (a multi-task run refuses them, `config.TrainConfig`), so a decoded unroll is task 0 and
encoding refuses any other.
"""

from typing import Any, List, NamedTuple, Sequence, Tuple

import jax
import numpy as np

from impala_jax import envs
from impala_jax import types
from impala_jax.distributed import wire

UNROLL, PARAMS, EPISODES = 10, 11, 12
MAX_EPISODES_PER_MESSAGE = 1000
EPISODES_SCHEMA = (wire.ArraySpec("episode_return", np.float64, (None,)),
                   wire.ArraySpec("episode_length", np.int32, (None,)))

_FIELDS = ("observation", "reward", "terminated", "truncated", "first", "action",
           "behaviour_log_prob", "policy_version")


def unroll_schema(spec: envs.EnvSpec, unroll_length: int,
                  initial_core_state: types.CoreState) -> Tuple[wire.ArraySpec, ...]:
  """One unroll as actors emit it: leaves `[T+1, 1, ...]`, core state leaves `[1, ...]`."""
  n = unroll_length + 1
  obs_dtype = np.float32 if spec.observation_dtype == np.float64 else spec.observation_dtype
  if spec.discrete:
    action = wire.ArraySpec("action", np.int32, (n, 1))
  else:
    action = wire.ArraySpec("action", np.float32, (n, 1, spec.action_dim))
  schema = [wire.ArraySpec("observation", obs_dtype, (n, 1) + tuple(spec.observation_shape)),
            wire.ArraySpec("reward", np.float32, (n, 1)),
            wire.ArraySpec("terminated", np.bool_, (n, 1)),
            wire.ArraySpec("truncated", np.bool_, (n, 1)),
            wire.ArraySpec("first", np.bool_, (n, 1)),
            action,
            wire.ArraySpec("behaviour_log_prob", np.float32, (n, 1)),
            wire.ArraySpec("policy_version", np.int32, (n, 1))]
  for i, leaf in enumerate(jax.tree.leaves(initial_core_state)):
    schema.append(wire.ArraySpec(f"core_{i}", np.dtype(leaf.dtype), (1,) + leaf.shape[1:]))
  return tuple(schema)


def blob_bytes(schema: Sequence[wire.ArraySpec]) -> int:
  """The size of every well-formed message of a fixed-shape `schema` (an unroll's, params')."""
  return wire.max_message_bytes(schema, max_batch=1)


def encode_unroll(unroll: types.Unroll, schema: Sequence[wire.ArraySpec],
                  host_id: int = 0) -> bytes:
  """Raises ValueError for an unroll of a task other than 0 (module doc)."""
  if np.any(unroll.task):
    raise ValueError("Only task 0's unrolls cross the wire: remote hosts and stores do not "
                     "serve multi-task runs yet.")
  arrays = {name: getattr(unroll, name) for name in _FIELDS}
  for i, leaf in enumerate(jax.tree.leaves(unroll.core_state)):
    arrays[f"core_{i}"] = np.asarray(leaf)
  return wire.encode(UNROLL, host_id, schema, arrays)


def decode_unroll(payload: bytes, schema: Sequence[wire.ArraySpec],
                  initial_core_state: types.CoreState) -> Tuple[types.Unroll, int]:
  """(an `Unroll`, its host id) from a message checked against `schema`; raises
  `wire.WireError`."""
  message = wire.decode(payload, schema, max_batch=1)
  if message.kind != UNROLL:
    raise wire.WireError(f"Expected an UNROLL (kind {UNROLL}), got kind {message.kind}.")
  a = message.arrays
  leaves = [a[f"core_{i}"] for i in range(len(jax.tree.leaves(initial_core_state)))]
  core_state = jax.tree.unflatten(jax.tree.structure(initial_core_state), leaves)
  task = np.zeros_like(a["policy_version"])  # [T+1, 1] int32: the run's one task.
  return (types.Unroll(*(a[name] for name in _FIELDS), task=task, core_state=core_state),
          message.sequence)


def params_schema(params: Any) -> Tuple[wire.ArraySpec, ...]:
  return tuple(wire.ArraySpec(f"leaf_{i}", np.dtype(leaf.dtype), tuple(leaf.shape))
               for i, leaf in enumerate(jax.tree.leaves(params)))


def encode_params(params: Any, version: int) -> bytes:
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
  schema = params_schema(leaves)
  return wire.encode(PARAMS, version, schema,
                     {spec.name: leaf for spec, leaf in zip(schema, leaves)})


def decode_params(payload: bytes, template: Any) -> Tuple[Any, int]:
  """(params shaped like `template`, version); raises `wire.WireError` on any mismatch."""
  message = wire.decode(payload, params_schema(template), max_batch=1)
  if message.kind != PARAMS:
    raise wire.WireError(f"Expected PARAMS (kind {PARAMS}), got kind {message.kind}.")
  leaves: List[np.ndarray] = [message.arrays[f"leaf_{i}"]
                              for i in range(len(jax.tree.leaves(template)))]
  return jax.tree.unflatten(jax.tree.structure(template), leaves), message.sequence


EPISODES_BLOB_BYTES = wire.max_message_bytes(EPISODES_SCHEMA, MAX_EPISODES_PER_MESSAGE)


class EpisodeRecords(NamedTuple):
  host_id: int
  returns: np.ndarray  # [n] float64
  lengths: np.ndarray  # [n] int32


def encode_episodes(episodes: Sequence[types.EpisodeStats], host_id: int = 0) -> bytes:
  return wire.encode(EPISODES, host_id, EPISODES_SCHEMA, dict(
      episode_return=[e.episode_return for e in episodes],
      episode_length=[e.episode_length for e in episodes]))


def decode_episodes(payload: bytes) -> EpisodeRecords:
  message = wire.decode(payload, EPISODES_SCHEMA, max_batch=MAX_EPISODES_PER_MESSAGE)
  if message.kind != EPISODES:
    raise wire.WireError(f"Expected EPISODES (kind {EPISODES}), got kind {message.kind}.")
  a = message.arrays
  return EpisodeRecords(message.sequence, a["episode_return"], a["episode_length"])
