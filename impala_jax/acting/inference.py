"""The central inference server (SEED RL, Espeholt et al. 2020): actors never run the network.

Actor threads call `InferenceServer.act` with the observations of the environments that just
answered. One server thread gathers the requests that arrive within a short window, runs the
policy once on the whole batch with one jitted call on the accelerator, and hands each actor its
slice of the actions. Per-environment recurrent state lives here, in a device-resident table
indexed by global environment id, so actors stay network-agnostic.

Parameters are swapped atomically: `update_params` replaces one `(params, version)` tuple, and a
batch reads that tuple once, so every action of a batch comes from one parameter version.
"""

import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from impala_jax import stage_clock
from impala_jax import threads
from impala_jax import types
from impala_jax.acting import request_inbox
from impala_jax.acting import unroll_buffer

# How often blocked calls wake up to check whether the server is still alive.
_POLL_SECONDS = 0.1


class ActResult(NamedTuple):
  """What an actor gets back for one request of n environments.

  Attributes:
    action: `[n]` int32 or `[n, action_dim]` float32.
    behaviour_log_prob: `[n]` float32, log μ(a|x) under the parameters that acted.
    policy_version: the version of those parameters.
    core_state: the recurrent state *before* this step, leaves `[n, ...]`; () without a core.
  """

  action: np.ndarray
  behaviour_log_prob: np.ndarray
  policy_version: int
  core_state: types.CoreState


class _Reply:
  """One request's answer: given once by the server thread, waited for by its actor.

  A raw lock held until the answer is in is the cheapest wake-up CPython has (a Future's
  Condition costs a waiter lock and several lock operations per request).
  """

  __slots__ = ("_answered", "result", "error")

  def __init__(self):
    self._answered = threading.Lock()
    self._answered.acquire()
    self.result: Optional[ActResult] = None
    self.error: Optional[BaseException] = None

  def give(self, result: Optional[ActResult] = None,
           error: Optional[BaseException] = None) -> None:
    self.result, self.error = result, error
    self._answered.release()

  def wait(self, timeout: float) -> bool:
    return self._answered.acquire(timeout=timeout)


class _Request(NamedTuple):
  env_ids: np.ndarray  # [n] int32, global environment ids
  observation: np.ndarray  # [n, *obs_shape]
  first: np.ndarray  # [n] bool
  reply: _Reply


class InferenceStats(NamedTuple):
  batches: int
  mean_batch_size: float  # environments per policy call
  mean_requests_per_batch: float
  mean_latency_ms: float  # policy call, device→host copy included


def make_policy_step(apply_fn: Callable[..., Any], initial_core_state: types.CoreState):
  """Builds the jitted batched step: gather core state, run the net, sample, scatter state.

  Args:
    apply_fn: `apply_fn(params, observation [1, N, ...], first [1, N], core_state) ->
      (AgentOutput with leaves [1, N, ...], new_core_state)`.
    initial_core_state: the core state of one environment, leaves `[1, ...]` (zeros), or ().

  Returns:
    `step(params, state_table, key, env_ids [N], observations, first [N]) ->
    (new_state_table, next_key, action [N], log_prob [N], core_state_before [N, ...])`, where
    `observations` is a tuple of arrays `[n_i, ...]` with Σn_i = N, joined on the device (so
    each request's observations go in as they are, read in place where the host allows).
    Row `num_envs` of the state table is scratch space for padding entries. The key is split
    inside: no separate call per batch.
  """

  def step(params, state_table, key, env_ids, observations, first):
    next_key, key = jax.random.split(key)
    observation = observations[0] if len(observations) == 1 else jnp.concatenate(observations)
    core_state = jax.tree.map(lambda table: table[env_ids], state_table)
    # Reset the recurrent state of environments starting an episode.
    core_state = jax.tree.map(
        lambda s, init: jnp.where(first.reshape((-1,) + (1,) * (s.ndim - 1)), init, s),
        core_state, initial_core_state)
    output, new_core_state = apply_fn(params, observation[None], first[None], core_state)
    policy = jax.tree.map(lambda x: x[0], output.policy)
    action = policy.sample(key)
    log_prob = policy.log_prob(action)
    new_table = jax.tree.map(lambda table, s: table.at[env_ids].set(s), state_table,
                             new_core_state)
    return new_table, next_key, action, log_prob, core_state

  return jax.jit(step, donate_argnums=(1, 2))


class InferenceServer(threads.Worker):
  """Batches action requests from all actor threads into one accelerator call.

  Owns one thread; `start()` launches it, `close()` stops and joins it. If the thread fails,
  every pending and later `act` call raises, and `error` holds the cause.
  """

  def __init__(self,
               apply_fn: Callable[..., Any],
               params: Any,
               initial_core_state: types.CoreState,
               num_envs: int,
               batch_sizes: Sequence[int],
               seed: int,
               batch_wait_ms: float = 1.0,
               expected_requests: Optional[int] = None,
               initial_version: int = 0):
    """Args:
      apply_fn: the network's apply, see `make_policy_step`.
      params: initial parameters.
      initial_core_state: one environment's zero core state, leaves `[1, ...]`, or ().
      num_envs: total environments over all actors; their ids are 0..num_envs-1.
      batch_sizes: the sizes a policy call may have; a batch is padded up to the smallest that
        fits, so the step compiles once per size (e.g. k × the actors' request size for
        k = 1..num_actors). The largest is the most environments one call takes.
      seed: seeds action sampling.
      batch_wait_ms: after the first request, wait this long for more before running.
      expected_requests: stop waiting as soon as this many requests are in (e.g. the number of
        actor threads and remote hosts: each has at most one request outstanding); it can
        change while serving (`set_expected_requests`). None always waits the whole window.
      initial_version: the version of `params` (the learner's update count on resume).
    """
    self._step = make_policy_step(apply_fn, initial_core_state)
    self._params_and_version: Tuple[Any, int] = (params, initial_version)
    self._num_envs = num_envs
    self._batch_sizes = sorted(set(int(b) for b in batch_sizes))
    self._max_batch_size = self._batch_sizes[-1]
    self._batch_wait_s = batch_wait_ms / 1000.0
    self._expected_requests = expected_requests
    self._key = jax.random.PRNGKey(seed)
    # One extra row absorbs the writes of padding entries.
    self._state_table = jax.tree.map(
        lambda s: jnp.zeros((num_envs + 1,) + s.shape[1:], s.dtype), initial_core_state)
    self._requests: "request_inbox.RequestInbox[_Request]" = request_inbox.RequestInbox()
    self._input_buffers: Dict[Tuple[str, int], Any] = {}  # (input, padded size) → array.
    super().__init__(name="inference-server", description="The inference server")
    self._stats_lock = threading.Lock()
    self._batches = 0
    self._batched_envs = 0
    self._batched_requests = 0
    self._latency_s = 0.0
    # The server thread's time: waiting for requests, assembling a batch, the policy call
    # (device→host copy included), handing out results.
    self.clock = stage_clock.StageClock(("wait", "assemble", "policy", "reply"))

  # -- lifetime ---------------------------------------------------------------------------------

  def close(self) -> None:
    super().close()
    self._fail_pending(RuntimeError("The inference server was closed."))

  # -- parameters -------------------------------------------------------------------------------

  def update_params(self, params: Any, version: int) -> None:
    """Atomically replaces the acting parameters (one tuple assignment)."""
    self._params_and_version = (params, version)

  @property
  def policy_version(self) -> int:
    return self._params_and_version[1]

  def set_expected_requests(self, expected_requests: Optional[int]) -> None:
    """How many requesters there are now (remote hosts come and go); one assignment."""
    self._expected_requests = expected_requests

  # -- the client side, called from actor threads ----------------------------------------------

  def act(self, env_ids: np.ndarray, observation: np.ndarray, first: np.ndarray) -> ActResult:
    """Blocks until the server has chosen actions for these environments.

    Args:
      env_ids: `[n]` global environment ids in [0, num_envs).
      observation: `[n, *obs_shape]`.
      first: `[n]` bool, True where the observation starts an episode.

    Raises:
      RuntimeError: the server stopped or failed.
    """
    if len(env_ids) > self._max_batch_size:
      raise ValueError(f"A request of {len(env_ids)} environments exceeds the server's "
                       f"max_batch_size={self._max_batch_size}.")
    reply = _Reply()
    self._requests.put(_Request(np.asarray(env_ids, np.int32), observation,
                                np.asarray(first, bool), reply))
    while not reply.wait(_POLL_SECONDS):
      if self._error is not None:
        raise RuntimeError("The inference server failed.") from self._error
      if self._stop.is_set() and not self._thread.is_alive():
        raise RuntimeError("The inference server was closed.")
    if reply.error is not None:
      raise reply.error
    return reply.result

  def stats(self, reset: bool = True) -> InferenceStats:
    with self._stats_lock:
      batches = max(self._batches, 1)
      stats = InferenceStats(self._batches, self._batched_envs / batches,
                             self._batched_requests / batches, 1000 * self._latency_s / batches)
      if reset:
        self._batches = self._batched_envs = self._batched_requests = 0
        self._latency_s = 0.0
    return stats

  # -- the server thread ------------------------------------------------------------------------

  def _run(self) -> None:
    self.clock.restart()
    while not self._stop.is_set():
      batch = self._gather()
      self.clock.lap("wait")
      if batch:
        self._serve(batch)

  def _on_error(self, error: BaseException) -> None:
    self._fail_pending(error)

  def _gather(self) -> List[_Request]:
    """The next batch of requests: what arrives within the batching window after the first,
    up to the expected number of requesters and the largest batch size."""
    return self._requests.take(_POLL_SECONDS, self._batch_wait_s, self._expected_requests,
                               self._max_batch_size, lambda request: len(request.env_ids))

  def _serve(self, batch: List[_Request]) -> None:
    start = time.perf_counter()
    sizes = [len(r.env_ids) for r in batch]
    n = sum(sizes)
    if n in self._batch_sizes and min(sizes) == max(sizes):
      # Requests of one size (the local actors'): each one's observations go in as they are,
      # no host copy; the step compiles once per number of requests.
      padded, observations = n, tuple(r.observation for r in batch)
    else:
      # Pad to a fixed size so the step compiles once, whatever the batch composition.
      padded = next(b for b in self._batch_sizes if b >= n)
      observations = (self._padded_observations(padded, batch[0].observation),)
      np.concatenate([r.observation for r in batch], out=observations[0][:n])
    env_ids, first = self._ids_and_firsts(padded)
    np.concatenate([r.env_ids for r in batch], out=env_ids[:n])
    env_ids[n:] = self._num_envs  # Padding entries write to the scratch row.
    np.concatenate([r.first for r in batch], out=first[:n])
    self.clock.lap("assemble")

    params, version = self._params_and_version
    self._state_table, self._key, action, log_prob, core_state = self._step(
        params, self._state_table, self._key, env_ids, observations, first)
    action, log_prob, core_state = jax.device_get((action, log_prob, core_state))
    self.clock.lap("policy")

    offset = 0
    for request, size in zip(batch, sizes):
      sl = slice(offset, offset + size)
      request.reply.give(
          ActResult(action[sl], log_prob[sl], version, jax.tree.map(lambda x: x[sl], core_state)))
      offset += size
    with self._stats_lock:
      self._batches += 1
      self._batched_envs += n
      self._batched_requests += len(batch)
      self._latency_s += time.perf_counter() - start
    self.clock.lap("reply")

  # The reused, aligned inputs of each padded size. Reuse is safe: a batch's results are on the
  # host (so its call has finished reading its inputs) before the next batch is assembled.

  def _ids_and_firsts(self, padded: int) -> Tuple[np.ndarray, np.ndarray]:
    key = ("ids", padded)
    if key not in self._input_buffers:
      self._input_buffers[key] = (unroll_buffer.aligned_zeros((padded,), np.int32),
                                  unroll_buffer.aligned_zeros((padded,), bool))
    return self._input_buffers[key]

  def _padded_observations(self, padded: int, like: np.ndarray) -> np.ndarray:
    key = ("observation", padded)
    buffer = self._input_buffers.get(key)
    if buffer is None or buffer.dtype != like.dtype or buffer.shape[1:] != like.shape[1:]:
      buffer = unroll_buffer.aligned_zeros((padded,) + like.shape[1:], like.dtype)
      self._input_buffers[key] = buffer
    return buffer

  def _fail_pending(self, error: BaseException) -> None:
    for request in self._requests.drain():
      request.reply.give(error=error)
