"""Tests for acting/batch_assembler.py and acting/unroll_buffer.py: unrolls into reused batches.

What must hold: unrolls reach batches in order and intact, time-major; a whole block becomes a
batch without a copy; buffers are aligned, reused once released and never written while the
learner holds them; writers blocked on a full assembler stop when asked.
"""

import threading

import jax
import numpy as np
import pytest

from impala_jax import config as config_lib
from impala_jax import envs
from impala_jax import networks
from impala_jax import types
from impala_jax.acting import batch_assembler
from impala_jax.acting import inference
from impala_jax.acting import unroll_buffer

T = 3
SPEC = envs.env_spec(config_lib.EnvConfig("CartPole-v1"))
NEVER = lambda: False


def _block(num_envs: int, offset: float = 0.0, lstm: bool = False) -> types.Unroll:
  """A `[T+1, num_envs]` block whose values name their place: 100·env + t + offset."""
  core = networks.LSTMState(cell=np.zeros((1, 2), np.float32),
                            hidden=np.zeros((1, 2), np.float32)) if lstm else ()
  block = unroll_buffer.unroll_storage(SPEC, num_envs, T, core)
  value = offset + 100.0 * np.arange(num_envs)[None] + np.arange(T + 1)[:, None]
  block.reward[...] = value
  block.observation[...] = value[..., None]
  block.policy_version[...] = value.astype(np.int32)
  for leaf in jax.tree.leaves(block.core_state):
    leaf[...] = offset + 100.0 * np.arange(num_envs)[:, None]
  return block


def test_unrolls_are_copied_into_batches_in_the_order_they_arrive():
  assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=2)
  block = _block(6, lstm=True)
  assert assembler.put_unrolls(block, np.array([0, 2, 4]), NEVER)
  assert assembler.get(timeout=0.01) is None  # Three of four: not a batch yet.
  assert assembler.put_unrolls(block, np.array([1, 3]), NEVER)
  batch = assembler.get(timeout=1)
  assert batch.unroll.reward.shape == (T + 1, 4)  # Time-major, B = 4.
  np.testing.assert_array_equal(batch.unroll.reward, block.reward[:, [0, 2, 4, 1]])
  np.testing.assert_array_equal(batch.unroll.observation, block.observation[:, [0, 2, 4, 1]])
  np.testing.assert_array_equal(batch.unroll.core_state.cell, block.core_state.cell[[0, 2, 4, 1]])
  assert assembler.queued_unrolls() == 1  # Environment 3 waits in the next batch.


def test_consecutive_columns_and_scattered_ones_copy_the_same():
  block = _block(8)
  for columns in (np.arange(2, 6), np.array([5, 1, 7, 2])):
    assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=1)
    assembler.put_unrolls(block, columns, NEVER)
    np.testing.assert_array_equal(assembler.get(timeout=1).unroll.observation,
                                  block.observation[:, columns])


def test_a_block_of_one_batch_is_queued_as_it_is_and_a_free_buffer_replaces_it():
  assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=1)
  block = _block(4)
  assert assembler.accepts_block(block) and not assembler.accepts_block(_block(3))
  fresh = assembler.put_block(block, NEVER)
  batch = assembler.get(timeout=1)
  assert batch.unroll.observation is block.observation  # No copy.
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, block)
  assert not any(np.shares_memory(a, b) for a, b in zip(jax.tree.leaves(fresh),
                                                        jax.tree.leaves(block)))


def test_buffers_are_aligned_and_reused_only_once_released():
  assembler = batch_assembler.BatchAssembler(batch_size=2, capacity=1, reader_buffers=1)
  assembler.put_unrolls(_block(2), np.arange(2), NEVER)
  held = assembler.get(timeout=1)
  assert all(leaf.ctypes.data % unroll_buffer.ALIGNMENT == 0
             for leaf in jax.tree.leaves(held.unroll))
  expected = held.unroll.reward.copy()
  # The second buffer fills and waits in the queue; a third batch has no buffer to go to.
  assembler.put_unrolls(_block(2, offset=1000), np.arange(2), NEVER)
  polls = {"n": 0}

  def give_up_after_a_few_polls():
    polls["n"] += 1
    return polls["n"] > 3

  assert not assembler.put_unrolls(_block(2, offset=2000), np.arange(2),
                                   give_up_after_a_few_polls)
  np.testing.assert_array_equal(held.unroll.reward, expected)  # Never written while held.
  assert assembler.buffers_allocated == 2
  held.release()
  queued = assembler.get(timeout=1)
  queued.release()
  assembler.put_unrolls(_block(2, offset=3000), np.arange(2), NEVER)
  reused = assembler.get(timeout=1)
  assert any(reused.unroll.reward is b.unroll.reward for b in (held, queued))
  np.testing.assert_array_equal(reused.unroll.reward, _block(2, offset=3000).reward)
  assert assembler.buffers_allocated == 2


def test_a_writer_waiting_for_a_buffer_goes_on_when_the_learner_releases_one():
  assembler = batch_assembler.BatchAssembler(batch_size=1, capacity=1, reader_buffers=1)
  block = _block(1)
  fresh = assembler.put_block(block, NEVER)
  held = assembler.get(timeout=1)
  second = assembler.put_block(fresh, NEVER)  # The last buffer there is.
  done = []
  writer = threading.Thread(target=lambda: done.append(assembler.put_block(second, NEVER)))
  writer.start()
  writer.join(timeout=0.5)
  assert writer.is_alive()  # Waiting: every buffer is queued or held.
  held.release()
  writer.join(timeout=5)
  assert not writer.is_alive() and done[0] is not None
  assert done[0].reward is block.reward  # The released buffer, back to a writer.


def test_releasing_a_batch_twice_is_an_error():
  assembler = batch_assembler.BatchAssembler(batch_size=1, capacity=1)
  assembler.put_unrolls(_block(1), np.arange(1), NEVER)
  batch = assembler.get(timeout=1)
  batch.release()
  with pytest.raises(RuntimeError, match="released twice"):
    batch.release()


def _result(n: int, version: int) -> inference.ActResult:
  return inference.ActResult(np.full(n, version % 2, np.int32), np.full(n, -0.5, np.float32),
                             version, ())


def _write_step(buffer, ids, version):
  observation = np.full((len(ids), 4), float(version), np.float32)
  returned = buffer.write_observation(ids, observation)
  n = len(ids)
  complete = buffer.write(ids, np.full(n, version, np.float32), np.zeros(n, bool),
                          np.zeros(n, bool), np.zeros(n, bool), _result(n, version))
  return returned, complete


def test_environments_in_lockstep_write_one_slab_that_inference_reads_in_place():
  buffer = unroll_buffer.UnrollBuffer(T, 4, SPEC)
  returned, _ = _write_step(buffer, np.arange(4), version=0)
  assert np.shares_memory(returned, buffer.block.observation)  # The slab itself, t = 0.
  np.testing.assert_array_equal(buffer.block.observation[0], returned)
  returned, _ = _write_step(buffer, np.array([2, 0]), version=1)  # Not every environment.
  assert not np.shares_memory(returned, buffer.block.observation)
  np.testing.assert_array_equal(buffer.block.observation[1, [2, 0]], returned)


def test_a_whole_block_hands_over_without_a_copy_and_the_next_starts_at_its_last_step():
  assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=2)
  buffer = unroll_buffer.UnrollBuffer(T, 4, SPEC)
  ids = np.arange(4)
  for version in range(2 * T + 1):  # Two unrolls: steps 0..T and T..2T.
    _, complete = _write_step(buffer, ids, version)
    if len(complete):
      block = buffer.block
      assert buffer.hand_over(complete, assembler, NEVER)
      assert buffer.block is not block
  first, second = assembler.get(timeout=1), assembler.get(timeout=1)
  np.testing.assert_array_equal(first.unroll.policy_version[:, 0], np.arange(T + 1))
  np.testing.assert_array_equal(second.unroll.policy_version[:, 0], np.arange(T, 2 * T + 1))
  np.testing.assert_array_equal(second.unroll.observation[0], first.unroll.observation[T])


def test_environments_out_of_step_hand_over_their_own_columns():
  assembler = batch_assembler.BatchAssembler(batch_size=2, capacity=4)
  buffer = unroll_buffer.UnrollBuffer(T, 4, SPEC)
  version = 0
  for ids in ([0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [0, 1], [2, 3], [2, 3], [0, 1]):
    _, complete = _write_step(buffer, np.array(ids), version)
    version += 1
    buffer.hand_over(complete, assembler, NEVER)
  # Environments 0 and 1 completed T+1 = 4 steps (versions 0, 1, 3, 5), then restarted there.
  batch = assembler.get(timeout=1)
  np.testing.assert_array_equal(batch.unroll.policy_version[:, 0], [0, 1, 3, 5])
  np.testing.assert_array_equal(buffer.block.policy_version[:2, 0], [5, 8])
  assert assembler.get(timeout=1).unroll.policy_version[0, 0] == 2  # Then 2 and 3.


def test_two_tasks_writers_share_buffers_and_every_column_keeps_its_own_task():
  # Buffers go round: a free block handed to task 1's writer was task 0's batch before.
  assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=1, reader_buffers=1)
  buffers = [unroll_buffer.UnrollBuffer(T, 4, SPEC, task=task) for task in (0, 1)]
  task_of = {id(buffer): task for buffer, task in zip(buffers, (0, 1))}
  for buffer, task in zip(buffers, (0, 1)):
    np.testing.assert_array_equal(buffer.block.task, np.full((T + 1, 4), task))
  for round_ in range(3):  # Whole blocks (lockstep), alternating writers.
    for buffer in buffers:
      for version in range(1 if round_ else 0, T + 1):  # Step 0 is the previous step T.
        _, complete = _write_step(buffer, np.arange(4), version)
      assert buffer.hand_over(complete, assembler, NEVER)
      batch = assembler.get(timeout=1)
      assert batch.unroll.task.dtype == np.int32 and batch.unroll.task.shape == (T + 1, 4)
      np.testing.assert_array_equal(batch.unroll.task, task_of[id(buffer)])
      batch.release()
      np.testing.assert_array_equal(buffer.block.task, task_of[id(buffer)])
  # Columns copied into a shared batch (out of step): each keeps its writer's task.
  assembler = batch_assembler.BatchAssembler(batch_size=4, capacity=2)
  buffers = [unroll_buffer.UnrollBuffer(T, 2, SPEC, task=task) for task in (0, 1)]
  for buffer in buffers:
    for version in range(T + 1):
      _, complete = _write_step(buffer, np.array([1, 0]), version)
    assert buffer.hand_over(complete, assembler, NEVER)
  batch = assembler.get(timeout=1)
  np.testing.assert_array_equal(batch.unroll.task, np.array([[0, 0, 1, 1]] * (T + 1)))
