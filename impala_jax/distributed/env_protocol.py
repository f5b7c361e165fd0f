"""What a remote environment host and the inference server say to each other (`wire` format).

First one unary call, `Settings`: the host asks for the learner's environment settings
(`learner_settings`) and builds its environments from them. Then one bidirectional stream per
host, where the host speaks first:

  HELLO    host → server, sequence 0: who it is (a session id, new for every connection, and
           a host id, the same for the host's life) and what it runs (checked against the
           learner's own environment before any step is accepted); it must come within the
           server's HELLO deadline
  STEP     host → server, sequence 1, 2, ...: EnvPool's results for some of its environments
  ACTIONS  server → host, the same sequence: the actions for exactly those environments
  GOODBYE  server → host, instead of ACTIONS: the run has ended (its budget or target score
           reached); the stream then ends and the host exits

The host keeps up to two STEPs in flight (two halves of an asynchronous EnvPool), so one
batch steps while the other's round trip is under way. Rejections are gRPC status codes with
a message that names the problem (the server logs the same line). What each code means to
the host: `REJECTED_RETRY` (values outside the task's ranges: reconnect with fresh
environments), `PERMANENT` (retrying cannot help: the host stops).
"""

from typing import NamedTuple, Tuple

import grpc
import numpy as np

from impala_jax import envs
from impala_jax.distributed import wire

HELLO, STEP, ACTIONS, GOODBYE = 1, 2, 3, 4

SERVICE = "impala_jax.EnvHost"
METHOD = f"/{SERVICE}/Stream"
SETTINGS_METHOD = f"/{SERVICE}/Settings"
# A STEP whose values break the task's ranges: rejected, the session ends, the host may come
# back with fresh environments (until it is evicted for repeating it).
REJECTED_RETRY = grpc.StatusCode.DATA_LOSS
# Rejections that a reconnect would only repeat: the host stops with the server's message.
PERMANENT = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.UNIMPLEMENTED)
# gRPC metadata key of the shared secret (lower case, as HTTP/2 requires).
TOKEN_METADATA_KEY = "impala-jax-token"

SESSION_ID_BYTES = 16
_NAME_BYTES = 64  # The task id, UTF-8, zero-padded.
_MAX_RANK = 8

HELLO_SCHEMA = (
    wire.ArraySpec("session_id", np.uint8, (SESSION_ID_BYTES,)),
    wire.ArraySpec("host_id", np.uint8, (SESSION_ID_BYTES,)),
    wire.ArraySpec("env_name", np.uint8, (_NAME_BYTES,)),
    wire.ArraySpec("num_envs", np.int32, (1,)),
    # observation rank, then its dims, zero-padded to _MAX_RANK.
    wire.ArraySpec("observation_shape", np.int32, (1 + _MAX_RANK,)),
    # wire dtype code of the observations; num_actions (0: continuous); action_dim (0: discrete)
    wire.ArraySpec("spec_codes", np.int32, (3,)),
)


class Hello(NamedTuple):
  session_id: bytes
  host_id: bytes
  env_name: str
  num_envs: int
  observation_shape: Tuple[int, ...]
  observation_dtype: np.dtype
  num_actions: int  # 0 for continuous actions
  action_dim: int  # 0 for discrete actions


def encode_hello(session_id: bytes, host_id: bytes, env_name: str, num_envs: int,
                 spec: envs.EnvSpec) -> bytes:
  name = env_name.encode("utf-8")[:_NAME_BYTES]
  shape = list(spec.observation_shape)
  return wire.encode(HELLO, 0, HELLO_SCHEMA, dict(
      session_id=np.frombuffer(session_id, np.uint8),
      host_id=np.frombuffer(host_id, np.uint8),
      env_name=np.frombuffer(name.ljust(_NAME_BYTES, b"\0"), np.uint8),
      num_envs=[num_envs],
      observation_shape=[len(shape)] + shape + [0] * (_MAX_RANK - len(shape)),
      spec_codes=[wire.DTYPES.index(_wire_dtype(spec)), spec.num_actions or 0,
                  spec.action_dim or 0]))


def decode_hello(payload: bytes) -> Hello:
  message = wire.decode(payload, HELLO_SCHEMA, max_batch=1)
  if message.kind != HELLO or message.sequence != 0:
    raise wire.WireError(f"Expected HELLO with sequence 0 first, got kind {message.kind} "
                         f"sequence {message.sequence}.")
  a = message.arrays
  rank = int(a["observation_shape"][0])
  code, num_actions, action_dim = (int(x) for x in a["spec_codes"])
  if not 0 < rank <= _MAX_RANK or not 0 <= code < len(wire.DTYPES):
    raise wire.WireError(f"HELLO declares observation rank {rank} and dtype code {code}.")
  return Hello(session_id=a["session_id"].tobytes(), host_id=a["host_id"].tobytes(),
               env_name=a["env_name"].tobytes().rstrip(b"\0").decode("utf-8", "replace"),
               num_envs=int(a["num_envs"][0]),
               observation_shape=tuple(int(d) for d in a["observation_shape"][1:1 + rank]),
               observation_dtype=wire.DTYPES[code], num_actions=num_actions,
               action_dim=action_dim)


def encode_goodbye(sequence: int) -> bytes:
  return wire.encode(GOODBYE, sequence, (), {})


def _wire_dtype(spec: envs.EnvSpec) -> np.dtype:
  """Observations travel in the dtype the actor's buffers keep (float64 → float32)."""
  dtype = np.dtype(spec.observation_dtype)
  return np.dtype(np.float32) if dtype == np.float64 else dtype


def step_schema(spec: envs.EnvSpec) -> Tuple[wire.ArraySpec, ...]:
  """A STEP for n environments (n ≤ the host's num_envs): EnvPool's results and info."""
  return (
      wire.ArraySpec("env_ids", np.int32, (None,)),
      wire.ArraySpec("observation", _wire_dtype(spec), (None,) + tuple(spec.observation_shape)),
      wire.ArraySpec("reward", np.float32, (None,)),
      wire.ArraySpec("terminated", np.bool_, (None,)),
      wire.ArraySpec("truncated", np.bool_, (None,)),
      # EnvPool's info: the unclipped game reward and the real game over (Atari; elsewhere the
      # reward and terminated again) and the step count, for the real episode scores.
      wire.ArraySpec("game_reward", np.float32, (None,)),
      wire.ArraySpec("game_over", np.bool_, (None,)),
      wire.ArraySpec("elapsed_step", np.int32, (None,)),
  )


def actions_schema(spec: envs.EnvSpec) -> Tuple[wire.ArraySpec, ...]:
  if spec.discrete:
    action = wire.ArraySpec("action", np.int32, (None,))
  else:
    action = wire.ArraySpec("action", np.float32, (None, spec.action_dim))
  return (wire.ArraySpec("env_ids", np.int32, (None,)), action)


def step_arrays(env_ids, observation, reward, terminated, truncated, info,
                family: envs.EnvFamily) -> dict:
  """The STEP arrays of one EnvPool `recv()` result."""
  if family is envs.EnvFamily.ATARI:
    game_reward, game_over = info["reward"], info["terminated"]
  else:
    game_reward, game_over = reward, terminated
  return dict(env_ids=env_ids, observation=observation, reward=reward, terminated=terminated,
              truncated=truncated, game_reward=game_reward, game_over=game_over,
              elapsed_step=info["elapsed_step"])


def step_info(arrays: dict) -> dict:
  """The EnvPool-style info dict `envs.EpisodeTracker` reads, from a decoded STEP."""
  return {"reward": arrays["game_reward"], "terminated": arrays["game_over"],
          "elapsed_step": arrays["elapsed_step"]}
