"""Taking everything a queue holds now, for the threads that collect what others put there."""

import queue
from typing import List, TypeVar, Union

Item = TypeVar("Item")


def drain(items: Union["queue.Queue[Item]", "queue.SimpleQueue[Item]"]) -> List[Item]:
  """Every item in `items` now, oldest first, without waiting for more."""
  taken = []
  while True:
    try:
      taken.append(items.get_nowait())
    except queue.Empty:
      return taken
