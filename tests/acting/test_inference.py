"""Tests for the central inference server (impala_jax/inference.py)."""

import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impala_jax.rl import distributions
from impala_jax.acting import inference

OBS_DIM = 3
NUM_ACTIONS = 4


class _Output(NamedTuple):
  policy: distributions.Categorical
  value: jax.Array


def _apply(params, observation, first, core_state):
  """A fake network: logits = obs @ params; the core state counts steps since `first`."""
  del first  # The server resets the state itself.
  logits = observation.astype(jnp.float32) @ params  # [1, N, A]
  counter = core_state + 1.0
  return _Output(distributions.Categorical(logits), counter[None, :, 0]), counter


def _server(num_envs=8, batch_sizes=(2, 4, 8), **kwargs):
  params = jnp.zeros((OBS_DIM, NUM_ACTIONS))
  return inference.InferenceServer(_apply, params, jnp.zeros((1, 1)), num_envs=num_envs,
                                   batch_sizes=batch_sizes, seed=0, **kwargs)


def test_act_returns_valid_actions_and_log_probs():
  with _server() as server:
    obs = np.ones((2, OBS_DIM), np.float32)
    result = server.act(np.array([0, 1]), obs, np.array([True, True]))
  assert result.action.shape == (2,) and result.action.dtype == np.int32
  assert np.all((result.action >= 0) & (result.action < NUM_ACTIONS))
  # Zero params: a uniform policy, log μ = −log 4.
  np.testing.assert_allclose(result.behaviour_log_prob, -np.log(NUM_ACTIONS), rtol=1e-6)
  assert result.policy_version == 0


def test_recurrent_state_is_kept_per_environment_and_reset_on_first():
  with _server() as server:
    obs = np.zeros((2, OBS_DIM), np.float32)
    server.act(np.array([0, 1]), obs, np.array([True, True]))
    server.act(np.array([0, 1]), obs, np.array([False, False]))
    # Env 0 continues (two steps done before this one), env 1 starts a new episode.
    result = server.act(np.array([0, 1]), obs, np.array([False, True]))
    # core_state is the state *before* this step.
    np.testing.assert_allclose(result.core_state[:, 0], [2.0, 0.0])
    # Env 5 was never stepped: its row is untouched by others' padding.
    result = server.act(np.array([5, 0]), obs, np.array([False, False]))
    np.testing.assert_allclose(result.core_state[:, 0], [0.0, 3.0])


def test_parameter_swap_changes_policy_and_version():
  with _server() as server:
    obs = np.ones((2, OBS_DIM), np.float32)
    params = jnp.zeros((OBS_DIM, NUM_ACTIONS)).at[:, 2].set(100.0)  # Always action 2.
    server.update_params(params, version=7)
    result = server.act(np.array([0, 1]), obs, np.array([True, True]))
  np.testing.assert_array_equal(result.action, [2, 2])
  assert result.policy_version == 7


def test_batches_requests_from_several_actor_threads():
  num_threads, per_request, calls = 4, 2, 40
  server = _server(num_envs=num_threads * per_request,
                   batch_sizes=[per_request * k for k in range(1, num_threads + 1)],
                   batch_wait_ms=20.0, expected_requests=num_threads)
  errors = []

  def actor(i):
    try:
      ids = np.arange(i * per_request, (i + 1) * per_request)
      obs = np.zeros((per_request, OBS_DIM), np.float32)
      for _ in range(calls):
        server.act(ids, obs, np.zeros(per_request, bool))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  with server:
    server.stats()  # reset
    threads = [threading.Thread(target=actor, args=(i,)) for i in range(num_threads)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    stats = server.stats()
  assert not errors
  assert stats.batches * stats.mean_batch_size == pytest.approx(num_threads * per_request * calls)
  # The point of central inference: one policy call serves several actors.
  assert stats.mean_batch_size > per_request
  assert stats.mean_requests_per_batch > 1.0


def test_oversized_request_is_rejected():
  with _server() as server:
    with pytest.raises(ValueError, match="max_batch_size=8"):
      server.act(np.arange(9), np.zeros((9, OBS_DIM), np.float32), np.zeros(9, bool))


def test_failure_in_server_thread_reaches_the_caller():
  def broken_apply(params, observation, first, core_state):
    raise ValueError("broken network")

  server = inference.InferenceServer(broken_apply, jnp.zeros(()), (), num_envs=2,
                                     batch_sizes=[2], seed=0)
  with server:
    with pytest.raises(RuntimeError, match="inference server failed"):
      server.act(np.arange(2), np.zeros((2, OBS_DIM), np.float32), np.ones(2, bool))
    assert isinstance(server.error, ValueError)


def test_close_joins_the_thread():
  server = _server().start()
  server.close()
  assert not server.is_alive()
  assert not any(t.name == "inference-server" for t in threading.enumerate())


def test_policy_step_compiles_once_per_batch_size():
  traces = {"n": 0}

  def counting_apply(*args):
    traces["n"] += 1  # Runs only while tracing.
    return _apply(*args)

  server = inference.InferenceServer(counting_apply, jnp.zeros((OBS_DIM, NUM_ACTIONS)),
                                     jnp.zeros((1, 1)), num_envs=8, batch_sizes=[2, 4], seed=0)
  with server:
    for n in (1, 2, 2, 3, 4, 1, 3):  # Sizes 1-2 pad to 2, sizes 3-4 pad to 4.
      server.act(np.arange(n), np.zeros((n, OBS_DIM), np.float32), np.zeros(n, bool))
  assert traces["n"] == 2


def test_batches_requests_of_four_real_actor_threads():
  """Four `Actor`s stepping real CartPole pools through one server: calls hold several."""
  from impala_jax import config as config_lib, networks
  from impala_jax.acting import actor as actor_lib
  from impala_jax.acting import batch_assembler

  num_actors, envs_per_actor = 4, 2
  network = networks.ImpalaNetwork("mlp", num_actions=2, mlp_hidden_sizes=(8,))
  params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4)), jnp.ones((1, 1), bool), ())
  server = inference.InferenceServer(
      network.apply, params, (), num_envs=num_actors * envs_per_actor,
      batch_sizes=[envs_per_actor * k for k in range(1, num_actors + 1)], seed=0,
      batch_wait_ms=5.0, expected_requests=num_actors)
  batches = batch_assembler.BatchAssembler(batch_size=1, capacity=4)
  actors = [actor_lib.Actor(i, config_lib.EnvConfig("CartPole-v1", num_envs=envs_per_actor,
                                                    seed=i), server, batches, 5)
            for i in range(num_actors)]
  with server:
    for a in actors:
      a.start()
    try:
      for _ in range(100):
        batches.get(timeout=60).release()
    finally:
      for a in actors:
        a.close()
    stats = server.stats()
  assert all(a.error is None for a in actors)
  assert stats.mean_batch_size > envs_per_actor, stats
