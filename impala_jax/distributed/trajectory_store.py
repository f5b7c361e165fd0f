"""A Redis trajectory store: actor hosts push unrolls and read parameters; the learner pops.

Keys under one prefix:

  <prefix>:unrolls         a list of encoded unrolls, bounded: RPUSH + LTRIM in one
                           transaction keeps the newest `capacity` (stale data is worse than
                           lost data); what LTRIM drops is counted in <prefix>:dropped
  <prefix>:episodes        finished episodes' real scores from the actor hosts (bounded), so
                           the learner's metrics and episodes.csv show the game scores
  <prefix>:learner         the id of the one learner using these keys, with a lease it keeps
                           renewing (`claim_learner`, `renew_learner`): a second learner on
                           the same keys would read the first one's unrolls as stale and
                           fight over the parameters, so it is refused
  <prefix>:params          the newest parameters (one `wire` message; its sequence is the
                           version) and <prefix>:params_version, written together (MULTI), so
                           actors read the small version key and fetch parameters only when it
                           changed. Never pub/sub: Redis disconnects slow subscribers.

Every blocking call has a timeout (BLPOP's, and a socket timeout larger than it). Connection
loss (Redis restarting) raises `StoreUnavailable`; callers retry with backoff (`retrying`).
The password comes from $REDIS_PASSWORD or a file, never from the URL or a command line.
Nothing read from Redis is unpickled: blobs are `wire` messages checked by the reader.
"""

import time
import urllib.parse
from typing import Callable, List, NamedTuple, Optional, Sequence, TypeVar

from absl import logging
import redis
from redis import backoff
from redis import retry as retry_lib

from impala_jax import config as config_lib
from impala_jax.distributed import auth

PASSWORD_ENV_VAR = "REDIS_PASSWORD"
BLOCK_SECONDS = 1.0
_SOCKET_TIMEOUT_SECONDS = 10.0  # > BLOCK_SECONDS: a blocking read must never look like a hang.
_CONNECT_TIMEOUT_SECONDS = 5.0
_MAX_BACKOFF_SECONDS = 5.0

T = TypeVar("T")


class StoreUnavailable(ConnectionError):
  """Redis cannot be reached right now (down, restarting, or a network fault)."""


class StoreStats(NamedTuple):
  length: int
  dropped: int
  used_memory_mb: float


def parse_url(url: str):
  """(host, port, db) of redis://HOST:PORT/DB; a password in the URL is refused."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme != "redis" or not parsed.hostname:
    raise ValueError(f"The trajectory store must be redis://HOST:PORT/DB, got {url!r}.")
  if parsed.password or parsed.username:
    raise ValueError("Put the Redis password in $REDIS_PASSWORD or --redis_password_file, not "
                     "in the URL (URLs end up in logs, configs and `ps`).")
  path = parsed.path.lstrip("/")
  if path and not path.isdigit():
    raise ValueError(f"The Redis database must be a number, got {path!r} in {url!r}.")
  return parsed.hostname, parsed.port or 6379, int(path or 0)


class RedisStore:
  """The store's operations; each maps Redis' connection errors to `StoreUnavailable`."""

  def __init__(self, config: config_lib.TrajectoryStoreConfig):
    host, port, db = parse_url(config.url)
    password = auth.read_secret(config.password_file, PASSWORD_ENV_VAR)
    self._client = redis.Redis(host=host, port=port, db=db, password=password,
                               socket_timeout=_SOCKET_TIMEOUT_SECONDS,
                               socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS,
                               health_check_interval=30,
                               # Outages are retried by the callers (`retrying`), visibly;
                               # redis-py's own silent retries would hide them.
                               retry=retry_lib.Retry(backoff.NoBackoff(), 0))
    self._capacity = config.capacity
    prefix = config.key_prefix
    self._unrolls, self._dropped = f"{prefix}:unrolls", f"{prefix}:dropped"
    self._params, self._version = f"{prefix}:params", f"{prefix}:params_version"
    self._learner = f"{prefix}:learner"
    self._episodes = f"{prefix}:episodes"
    # Renew or release the learner key only if it is still ours (atomic on the server). A
    # missing key (Redis restarted empty) is taken back; another learner's is not.
    self._renew = self._client.register_script(
        "local holder = redis.call('get', KEYS[1]) "
        "if holder == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) "
        "elseif not holder then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 "
        "else return 0 end")
    self._release = self._client.register_script(
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('del', KEYS[1]) else return 0 end")
    self.url = config.url
    self.prefix = prefix

  def check(self) -> None:
    """Fails now, with a clear message, on a wrong password or an unreachable server."""
    self._call(self._client.ping)

  def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
    try:
      return fn(*args, **kwargs)
    except redis.AuthenticationError as e:
      raise PermissionError(self._auth_message(e)) from e
    except redis.ResponseError as e:
      if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
        raise PermissionError(self._auth_message(e)) from e
      raise
    except (redis.ConnectionError, redis.TimeoutError) as e:
      raise StoreUnavailable(f"Redis at {self.url} is unavailable: {e}") from e

  def _auth_message(self, error: Exception) -> str:
    return (f"Redis at {self.url} refused the connection: wrong or missing password ({error}); "
            f"set ${PASSWORD_ENV_VAR} or --redis_password_file.")

  # -- unrolls ----------------------------------------------------------------------------------

  def push_unrolls(self, blobs: Sequence[bytes]) -> int:
    """Appends `blobs`, keeps the newest `capacity`; returns how many old ones were dropped."""
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.rpush(self._unrolls, *blobs)
      pipe.ltrim(self._unrolls, -self._capacity, -1)
      length, _ = pipe.execute()
      dropped = max(0, length - self._capacity)
      if dropped:
        self._client.incrby(self._dropped, dropped)
      return dropped
    return self._call(transaction)

  def pop_unrolls(self, count: int, block_seconds: float = BLOCK_SECONDS) -> List[bytes]:
    """Up to `count` of the oldest unrolls: waits up to `block_seconds` for the first one, then
    takes the rest in one transaction (two round trips per batch)."""
    def pop():
      first = self._client.blpop([self._unrolls], timeout=block_seconds)
      if first is None:
        return []
      blobs = [first[1]]
      if count > 1:
        pipe = self._client.pipeline(transaction=True)
        pipe.lrange(self._unrolls, 0, count - 2)
        pipe.ltrim(self._unrolls, count - 1, -1)
        rest, _ = pipe.execute()
        blobs.extend(rest)
      return blobs
    return self._call(pop)

  def push_episodes(self, blob: bytes, keep: int = 1000) -> None:
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.rpush(self._episodes, blob)
      pipe.ltrim(self._episodes, -keep, -1)
      pipe.execute()
    self._call(transaction)

  def pop_episodes(self) -> List[bytes]:
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.lrange(self._episodes, 0, -1)
      pipe.delete(self._episodes)
      blobs, _ = pipe.execute()
      return blobs
    return self._call(transaction)

  # -- parameters -------------------------------------------------------------------------------

  def publish_params(self, blob: bytes, version: int) -> None:
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.set(self._params, blob)
      pipe.set(self._version, version)
      pipe.execute()
    self._call(transaction)

  def params_version(self) -> Optional[int]:
    value = self._call(self._client.get, self._version)
    return None if value is None else int(value)

  def fetch_params(self) -> Optional[bytes]:
    return self._call(self._client.get, self._params)

  # -- the one learner ---------------------------------------------------------------------------

  def claim_learner(self, learner_id: str, lease_seconds: int) -> Optional[str]:
    """Takes the learner key for `lease_seconds`; returns None, or the id that holds it."""
    def claim():
      if self._client.set(self._learner, learner_id, nx=True, ex=lease_seconds):
        return None
      holder = self._client.get(self._learner)
      return holder.decode() if holder is not None else "(expired just now)"
    return self._call(claim)

  def renew_learner(self, learner_id: str, lease_seconds: int) -> bool:
    """Extends our lease; False if the key is no longer ours."""
    return bool(self._call(self._renew, keys=[self._learner], args=[learner_id, lease_seconds]))

  def release_learner(self, learner_id: str) -> None:
    self._call(self._release, keys=[self._learner], args=[learner_id])

  # -- health -----------------------------------------------------------------------------------

  def stats(self) -> StoreStats:
    def read():
      pipe = self._client.pipeline(transaction=False)
      pipe.llen(self._unrolls)
      pipe.get(self._dropped)
      length, dropped = pipe.execute()
      memory = self._client.info("memory").get("used_memory", 0)
      return StoreStats(int(length), int(dropped or 0), memory / 2**20)
    return self._call(read)

  def close(self) -> None:
    self._client.close()


def retrying(fn: Callable[[], T], stop_requested: Callable[[], bool], what: str) -> Optional[T]:
  """Calls `fn` until it works, backing off while the store is unavailable; None on stop."""
  backoff = 0.5
  warned = False
  while not stop_requested():
    try:
      result = fn()
      if warned:
        logging.info("Redis is back (%s).", what)
      return result
    except StoreUnavailable as e:
      if not warned:
        logging.warning("%s; retrying (%s).", e, what)
        warned = True
      deadline = time.monotonic() + backoff
      while time.monotonic() < deadline and not stop_requested():
        time.sleep(0.1)
      backoff = min(2 * backoff, _MAX_BACKOFF_SECONDS)
  return None
