"""A pool's shared arrays and EnvPool's episode semantics over a block of `Copy`s.

`Buffers` are the arrays the results go to (memory-mapped and shared with the pool in a worker
process); `Copies` holds the episode logic that makes gymnasium and dm_env environments behave
like EnvPool's (next-step autoreset, terminated vs truncated, `elapsed_step`).
"""

from typing import List, Optional, Sequence

import numpy as np

from . import environment


class Buffers:
  """A pool's result and action arrays `[num_envs, ...]`, in memory or on a shared file.

  With `path`, every array is a view of one memory-mapped file (the pool puts it on /dev/shm,
  i.e. in RAM, where there is one): the pool and its worker processes map the same file.
  """

  _ALIGN = 64

  def __init__(self, layout: dict, num_envs: int, path: Optional[str] = None):
    mapped = None
    if path is not None:
      mapped = np.memmap(path, np.uint8, mode="r+", shape=(self.nbytes(layout, num_envs),))
    offset = 0
    for name, (shape, dtype) in self.fields(layout, num_envs).items():
      size = int(np.prod(shape)) * dtype.itemsize
      if mapped is None:
        array = np.zeros(shape, dtype)
      else:
        array = mapped[offset:offset + size].view(dtype).reshape(shape)
      offset += self._aligned(size)
      setattr(self, name, array)

  @staticmethod
  def fields(layout: dict, num_envs: int) -> dict:
    action_shape = (num_envs,) if layout["discrete"] else (num_envs, layout["action_dim"])
    return dict(observation=((num_envs,) + tuple(layout["observation_shape"]),
                             np.dtype(layout["observation_dtype"])),
                reward=((num_envs,), np.dtype(np.float32)),
                terminated=((num_envs,), np.dtype(np.bool_)),
                truncated=((num_envs,), np.dtype(np.bool_)),
                elapsed_step=((num_envs,), np.dtype(np.int32)),
                action=(action_shape, np.dtype(np.int32 if layout["discrete"] else
                                               np.float32)))

  @classmethod
  def _aligned(cls, size: int) -> int:
    return -(-size // cls._ALIGN) * cls._ALIGN

  @classmethod
  def nbytes(cls, layout: dict, num_envs: int) -> int:
    return sum(cls._aligned(int(np.prod(shape)) * dtype.itemsize)
               for shape, dtype in cls.fields(layout, num_envs).values())


class Copies:
  """Copies `[offset, offset + len(copies))` of a pool: resets, steps, next-step autoresets.

  Each call handles the listed copies (global ids) one after the other, reading their actions
  from `buffers.action` and writing their results to `buffers` (EnvPool's semantics, see
  `envs.custom`).
  """

  def __init__(self, copies: List[environment.Copy], offset: int, buffers: Buffers, seed: int,
               max_episode_steps: Optional[int]):
    self._copies = copies
    self._offset = offset
    self._buffers = buffers
    self._seed = seed
    self._max_episode_steps = max_episode_steps
    n = len(copies)
    self._seeded = np.zeros(n, bool)
    self._ended = np.zeros(n, bool)
    self._elapsed = np.zeros(n, np.int64)

  def _reset_one(self, env_id: int) -> None:
    local = env_id - self._offset
    seed = None
    if not self._seeded[local]:  # Seeded once; later episodes continue its random stream.
      seed = self._seed + env_id
      self._seeded[local] = True
    observation = self._copies[local].reset(seed)
    self._ended[local] = False
    self._elapsed[local] = 0
    self._write(env_id, observation, 0.0, False, False, 0)

  def _write(self, env_id, observation, reward, terminated, truncated, elapsed) -> None:
    b = self._buffers
    b.observation[env_id] = observation
    b.reward[env_id] = reward
    b.terminated[env_id] = terminated
    b.truncated[env_id] = truncated
    b.elapsed_step[env_id] = elapsed

  def reset(self, env_ids: Sequence[int]) -> None:
    for env_id in env_ids:
      self._reset_one(int(env_id))

  def step(self, env_ids: Sequence[int]) -> None:
    for env_id in env_ids:
      env_id = int(env_id)
      local = env_id - self._offset
      if self._ended[local]:  # Next-step autoreset: the action is ignored.
        self._reset_one(env_id)
        continue
      observation, reward, terminated, truncated = self._copies[local].step(
          self._buffers.action[env_id])
      self._elapsed[local] += 1
      elapsed = int(self._elapsed[local])
      if self._max_episode_steps is not None and elapsed >= self._max_episode_steps:
        truncated = True
      terminated = terminated and not truncated  # EnvPool's rule: never both.
      self._ended[local] = terminated or truncated
      self._write(env_id, observation, reward, terminated, truncated, elapsed)

  def render(self, env_id: int) -> np.ndarray:
    return self._copies[env_id - self._offset].render()

  def close(self) -> None:
    errors = []
    for copy in self._copies:
      try:
        copy.close()
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
    if errors:
      raise errors[0]
