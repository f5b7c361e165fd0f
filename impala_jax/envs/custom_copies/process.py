"""The main of a worker process: builds its block of copies, then steps them on command."""

import signal
import traceback
from multiprocessing import connection

from . import batching
from . import environment


def worker_process(fd: int) -> None:
  """A worker's main: builds its copies, then answers commands until "close" or EOF.

  The socket `fd` carries one init dict (factory, env id range, seed, max_episode_steps,
  layout, shared file), then `(command, argument)` pairs, each answered with
  `("ok", value)` or `("error", traceback)`, in order.
  """
  # Ctrl-C in a terminal reaches the whole process group; the pool's owner decides when its
  # workers stop (it may be saving a checkpoint), and EOF on the socket ends them anyway.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  conn = connection.Connection(fd)
  copies = None
  try:
    init = conn.recv()
    env_ids = range(*init["env_ids"])
    buffers = batching.Buffers(init["layout"], init["num_envs"], init["path"])
    built = environment.build(init["factory"], env_ids, init["seed"])
    copies = batching.Copies(built, env_ids.start, buffers, init["seed"], init["max_episode_steps"])
    layout = environment.conversion_of(built[0].env).layout()
    if layout != init["layout"]:
      raise ValueError(f"The worker's environments differ from the pool's: {layout} vs "
                       f"{init['layout']}.")
    conn.send(("ok", None))
    while True:
      command, argument = conn.recv()
      if command == "step":
        copies.step(argument)
        conn.send(("ok", None))
      elif command == "reset":
        copies.reset(argument)
        conn.send(("ok", None))
      elif command == "render":
        conn.send(("ok", copies.render(argument)))
      elif command == "close":
        closing, copies = copies, None
        closing.close()
        conn.send(("ok", None))
        return
      else:
        raise ValueError(f"Unknown command {command!r}.")
  except EOFError:  # The pool's owner is gone.
    pass
  except BaseException:  # pylint: disable=broad-except
    try:
      conn.send(("error", traceback.format_exc()))
    except (OSError, EOFError):
      pass
  finally:
    if copies is not None:
      try:
        copies.close()
      except Exception:  # pylint: disable=broad-except
        pass
    conn.close()
