"""Shared secrets for remote peers: read from a file or the environment, never a command line.

A secret on a command line is visible to every user of the machine (`ps`) and lands in shell
histories and run configs; a file (mode 600) or an environment variable is not.
"""

import hmac
import os
import stat
from typing import Optional

# The environment variable that holds the env hosts' token when no --token_file is given.
TOKEN_ENV_VAR = "IMPALA_JAX_TOKEN"
MIN_SECRET_CHARS = 16


def read_secret(path: Optional[str], env_var: str) -> Optional[str]:
  """The secret in `path` (stripped) if given, else `$env_var`, else None.

  Raises:
    ValueError: the file is missing, open to other users (group or world bits in its mode), or
      empty, or the secret is shorter than 16 characters.
  """
  if path:
    if not os.path.isfile(path):
      raise ValueError(f"Secret file {path!r} does not exist.")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
      raise ValueError(f"Secret file {path!r} has mode {mode:o}: other users can read or change "
                       f"it. Run `chmod 600 {path}` (and choose a new secret if it was shared).")
    with open(path, encoding="utf-8") as f:
      secret = f.read().strip()
    source = f"file {path!r}"
  else:
    secret = os.environ.get(env_var, "").strip()
    source = f"${env_var}"
    if not secret:
      return None
  if len(secret) < MIN_SECRET_CHARS:
    raise ValueError(f"The secret in {source} has {len(secret)} characters; use at least "
                     f"{MIN_SECRET_CHARS} (e.g. `python -c 'import secrets; "
                     "print(secrets.token_hex(16))'`).")
  return secret


def same_secret(given: Optional[str], expected: str) -> bool:
  """Constant-time comparison, so timing does not reveal how much of a guess was right."""
  return given is not None and hmac.compare_digest(given.encode(), expected.encode())
