"""Tests for actor threads (impala_jax/actor.py) with a real EnvPool and a fake inference server.

The actor hands its unrolls to the learner's real `BatchAssembler`, here with batches of one
unroll (`collect` copies each and hands its buffer back at once).
"""

import threading

import jax
import numpy as np

from impala_jax.acting import actor as actor_lib
from impala_jax.acting import batch_assembler
from impala_jax import config as config_lib
from impala_jax.acting import inference

T = 8


class FakeClient:
  """Always action 0 (CartPole falls within ~10 steps), log μ = −1, version = call count."""

  def __init__(self, with_core_state=False):
    self.calls = 0
    self.seen_ids = set()
    self.with_core_state = with_core_state

  def act(self, env_ids, observation, first):
    self.calls += 1
    self.seen_ids.update(int(i) for i in env_ids)
    n = len(env_ids)
    core = (np.full((n, 2), self.calls, np.float32),) if self.with_core_state else ()
    return inference.ActResult(np.zeros(n, np.int32), np.full(n, -1.0, np.float32), self.calls,
                               core)


def collect(num_unrolls, env_config, client, actor_id=0):
  """The first `num_unrolls` unrolls an actor hands over, in order, each `[T+1, 1, ...]`."""
  assembler = batch_assembler.BatchAssembler(batch_size=1, capacity=4)
  episodes = []
  actor = actor_lib.Actor(actor_id, env_config, client, assembler, T,
                          on_episode=episodes.append)
  unrolls = []
  actor.start()
  try:
    while len(unrolls) < num_unrolls:
      batch = assembler.get(timeout=60)
      assert batch is not None, "no unroll within 60 s"
      unrolls.append(jax.tree.map(np.copy, batch.unroll))
      batch.release()
  finally:
    actor.close()
  assert actor.error is None
  assert not actor.is_alive()
  return unrolls, episodes


def test_unrolls_have_t_plus_one_steps_and_overlap_by_one():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=2, seed=3)
  unrolls, episodes = collect(12, env_config, FakeClient())
  for u in unrolls:
    assert u.observation.shape == (T + 1, 1, 4)  # [time, env, obs]
    assert u.action.shape == (T + 1, 1) and u.action.dtype == np.int32
    assert u.core_state == ()
  # Unrolls of one environment come in order; each starts where the previous ended. With a
  # synchronous pool both environments finish their unrolls together.
  by_env = [unrolls[0::2], unrolls[1::2]]
  for env_unrolls in by_env:
    for previous, current in zip(env_unrolls, env_unrolls[1:]):
      np.testing.assert_array_equal(previous.observation[-1], current.observation[0])
      np.testing.assert_array_equal(previous.policy_version[-1], current.policy_version[0])
  # Always pushing left, CartPole terminates quickly; episodes were reported.
  assert episodes and all(e.episode_return == e.episode_length for e in episodes)


def test_first_follows_episode_ends_and_versions_are_recorded():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=1, seed=0)
  unrolls, _ = collect(6, env_config, FakeClient())
  first = np.concatenate([unrolls[0].first[:, 0]] + [u.first[1:, 0] for u in unrolls[1:]])
  done = np.concatenate([
      (unrolls[0].terminated | unrolls[0].truncated)[:, 0]] +
      [(u.terminated | u.truncated)[1:, 0] for u in unrolls[1:]])
  version = np.concatenate([unrolls[0].policy_version[:, 0]] +
                           [u.policy_version[1:, 0] for u in unrolls[1:]])
  time_steps = len(first)
  assert first[0]  # The very first observation starts an episode.
  # x_{t+1} is first exactly when x_t ended an episode.
  np.testing.assert_array_equal(first[1:], done[:-1])
  assert done.sum() >= 2
  # One request per step with one environment: versions count 1, 2, 3, ...
  np.testing.assert_array_equal(version, np.arange(1, time_steps + 1))
  # Rewards arriving with a first observation are EnvPool's autoreset zeros.
  reward = np.concatenate([unrolls[0].reward[:, 0]] + [u.reward[1:, 0] for u in unrolls[1:]])
  assert np.all(reward[first] == 0)


def test_async_pool_and_global_env_ids():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=4, batch_size=2, seed=1)
  client = FakeClient()
  unrolls, _ = collect(8, env_config, client, actor_id=2)
  assert client.seen_ids <= {8, 9, 10, 11}  # actor 2's environments: ids 8..11
  assert len(client.seen_ids) >= 2
  for u in unrolls:
    assert u.observation.shape == (T + 1, 1, 4)


def test_core_state_before_step_zero_is_recorded():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=1, seed=0)
  unrolls, _ = collect(3, env_config, FakeClient(with_core_state=True))
  # The fake's core state is the call count; step 0 of unroll k is call k*T + 1.
  for k, u in enumerate(unrolls):
    assert u.core_state[0].shape == (1, 2)
    assert u.core_state[0][0, 0] == k * T + 1
    assert u.policy_version[0, 0] == k * T + 1


def test_actor_records_failures_and_stops():
  class Broken:
    def act(self, env_ids, observation, first):
      raise RuntimeError("inference down")

  actor = actor_lib.Actor(0, config_lib.EnvConfig("CartPole-v1", num_envs=1), Broken(),
                          batch_assembler.BatchAssembler(batch_size=1, capacity=1), T)
  actor.start()
  actor._thread.join(timeout=30)  # pylint: disable=protected-access
  assert not actor.is_alive()
  assert isinstance(actor.error, RuntimeError)
  actor.close()


def test_close_unblocks_an_actor_waiting_for_a_free_batch():
  assembler = batch_assembler.BatchAssembler(batch_size=1, capacity=1, reader_buffers=1)
  actor = actor_lib.Actor(0, config_lib.EnvConfig("CartPole-v1", num_envs=2), FakeClient(),
                          assembler, T)
  actor.start()
  # Make sure it is producing; holding the batch (never released) leaves it no free buffer.
  held = assembler.get(timeout=30)
  assert held is not None
  closer = threading.Thread(target=actor.close)
  closer.start()
  closer.join(timeout=10)
  assert not closer.is_alive() and not actor.is_alive()


def test_threads_take_turns_at_the_games_with_seeds_that_never_overlap():
  config = config_lib.TrainConfig(
      env=config_lib.EnvConfig("Pong-v5,Breakout-v5", num_envs=4, seed=10),
      num_actor_threads=4)
  configs = actor_lib.env_configs(config, update_step=0)
  assert [actor_lib.actor_task(config, k) for k in range(4)] == [0, 1, 0, 1]
  assert [c.env_id for c in configs] == ["Pong-v5", "Breakout-v5"] * 2
  assert all(c.full_action_space and c.num_envs == 4 for c in configs)
  assert [c.seed for c in configs] == [10, 14, 18, 22]
  one_game = config_lib.TrainConfig(env=config_lib.EnvConfig("Pong-v5", num_envs=4),
                                    num_actor_threads=2)
  assert [c.env_id for c in actor_lib.env_configs(one_game, 0)] == ["Pong-v5"] * 2
  assert not any(c.full_action_space for c in actor_lib.env_configs(one_game, 0))
  assert actor_lib.actor_task(one_game, 1) == 0


def test_an_actors_unrolls_and_episodes_carry_its_task():
  env_config = config_lib.EnvConfig("CartPole-v1", num_envs=2, seed=3)
  assembler = batch_assembler.BatchAssembler(batch_size=1, capacity=4)
  episodes = []
  actor = actor_lib.Actor(1, env_config, FakeClient(), assembler, T,
                          on_episode=episodes.append, task=2)
  tasks = []
  actor.start()
  try:
    while len(tasks) < 6 or not episodes:
      batch = assembler.get(timeout=60)
      assert batch is not None, "no unroll within 60 s"
      tasks.append(np.copy(batch.unroll.task))
      batch.release()
  finally:
    actor.close()
  assert actor.error is None
  assert all(t.shape == (T + 1, 1) and (t == 2).all() for t in tasks)
  assert {e.task for e in episodes} == {2}
