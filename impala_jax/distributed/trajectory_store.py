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
  <prefix>:settings        what every actor host must share with the learner
                           (`learner_settings`), written when the learner starts
  <prefix>:done            set when the learner's run has ended (its budget or score): the
                           actor hosts then stop

Who may touch which key is `store_roles` (an ACL user per role). Every read is bounded in bytes
(a script pops only items up to the expected size, GETRANGE reads at most the expected size),
so a rogue writer cannot make a reader allocate without limit. Every blocking call has a
timeout. Redis unreachable, restarting, failing over, or refusing writes for lack of memory
(`noeviction`) raises `StoreUnavailable`; callers retry with backoff (`retrying`). The password
comes from $REDIS_PASSWORD or a file, never from the URL or a command line. Nothing read from
Redis is unpickled: blobs are `wire` messages checked by the reader.
"""

import time
import urllib.parse
from typing import Callable, List, NamedTuple, Optional, Sequence, TypeVar

from absl import logging
import redis
from redis import backoff
from redis import exceptions
from redis import retry as retry_lib

from impala_jax import config as config_lib
from impala_jax.distributed import auth

PASSWORD_ENV_VAR = "REDIS_PASSWORD"
POLL_SECONDS = 0.02  # How often an empty unroll list is looked at again while waiting.
_SOCKET_TIMEOUT_SECONDS = 10.0  # A read that takes this long is a dead connection.
_CONNECT_TIMEOUT_SECONDS = 5.0
_MAX_BACKOFF_SECONDS = 5.0
# Replies Redis gives while it cannot take a command for now: out of memory under
# `noeviction`, a replica after a failover, a script running, a cluster reconfiguring.
_TRANSIENT = (exceptions.OutOfMemoryError, exceptions.ReadOnlyError, exceptions.TryAgainError,
              exceptions.ClusterDownError)
_TRANSIENT_PREFIXES = ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")
# Pops up to ARGV[1] items from the head of KEYS[1], dropping any larger than ARGV[2] bytes,
# until ARGV[3] bytes are taken; returns {items dropped, item, item, ...}. Only LPOPs: it runs
# when Redis is out of memory too (popping is how memory comes back).
_POP_BOUNDED = """
local items, dropped, total = {0}, 0, 0
while #items - 1 < tonumber(ARGV[1]) and total < tonumber(ARGV[3]) do
  local item = redis.call('lpop', KEYS[1])
  if not item then break end
  if string.len(item) > tonumber(ARGV[2]) then
    dropped = dropped + 1
  else
    items[#items + 1] = item
    total = total + string.len(item)
  end
end
items[1] = dropped
return items
"""

T = TypeVar("T")


class StoreUnavailable(ConnectionError):
  """Redis cannot serve this right now (down, restarting, out of memory, a network fault)."""


class StoreStats(NamedTuple):
  length: int
  dropped: int
  used_memory_mb: float


class Popped(NamedTuple):
  blobs: List[bytes]
  oversized: int  # Items dropped unread: larger than any well-formed blob.


class LearnerState(NamedTuple):
  """What an actor host polls: the parameters' version, whether a learner holds the keys,
  whether the run has ended."""

  params_version: Optional[int]
  learner_present: bool
  run_ended: bool


def parse_url(url: str):
  """(host, port, db, tls) of redis[s]://HOST:PORT/DB; a password in the URL is refused."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
    raise ValueError(f"The trajectory store must be redis[s]://HOST:PORT/DB, got {url!r}.")
  if parsed.password or parsed.username:
    raise ValueError("Put the Redis user in --redis_username and its password in "
                     "$REDIS_PASSWORD or --redis_password_file, not in the URL (URLs end up in "
                     "logs, configs and `ps`).")
  path = parsed.path.lstrip("/")
  if path and not path.isdigit():
    raise ValueError(f"The Redis database must be a number, got {path!r} in {url!r}.")
  return parsed.hostname, parsed.port or 6379, int(path or 0), parsed.scheme == "rediss"


def _client(config: config_lib.TrajectoryStoreConfig) -> redis.Redis:
  host, port, db, tls = parse_url(config.url)
  password = auth.read_secret(config.password_file, PASSWORD_ENV_VAR)
  tls_options = dict(ssl=True, ssl_ca_certs=config.tls_ca_file,
                     ssl_certfile=config.tls_cert_file,
                     ssl_keyfile=config.tls_key_file) if tls else {}
  return redis.Redis(host=host, port=port, db=db, username=config.username, password=password,
                     socket_timeout=_SOCKET_TIMEOUT_SECONDS,
                     socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS, health_check_interval=30,
                     # Outages are retried by the callers (`retrying`), visibly; redis-py's
                     # own silent retries would hide them.
                     retry=retry_lib.Retry(backoff.NoBackoff(), 0), **tls_options)


class RedisStore:
  """The store's operations; each maps Redis' transient errors to `StoreUnavailable`."""

  def __init__(self, config: config_lib.TrajectoryStoreConfig):
    self._client = _client(config)
    self._username = config.username or "default"
    self._capacity = config.capacity
    prefix = config.key_prefix
    self._unrolls, self._dropped = f"{prefix}:unrolls", f"{prefix}:dropped"
    self._params, self._version = f"{prefix}:params", f"{prefix}:params_version"
    self._learner, self._done = f"{prefix}:learner", f"{prefix}:done"
    self._episodes, self._settings = f"{prefix}:episodes", f"{prefix}:settings"
    self._pop_bounded = self._client.register_script(_POP_BOUNDED)
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
    except (redis.ConnectionError, redis.TimeoutError) as e:
      raise StoreUnavailable(f"Redis at {self.url} is unavailable: {e}") from e
    except exceptions.NoPermissionError as e:
      raise PermissionError(f"Redis user {self._username!r} may not do this at {self.url}: "
                            f"{e} (store_roles: actor hosts use --redis_username=actor, the "
                            "learner --redis_username=learner).") from e
    except redis.ResponseError as e:
      if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
        raise PermissionError(self._auth_message(e)) from e
      if isinstance(e, _TRANSIENT) or str(e).startswith(_TRANSIENT_PREFIXES):
        raise StoreUnavailable(f"Redis at {self.url} refuses this for now: "
                               f"{type(e).__name__}: {e}") from e
      raise

  def _auth_message(self, error: Exception) -> str:
    return (f"Redis at {self.url} refused user {self._username!r}: wrong or missing password "
            f"({error}); set ${PASSWORD_ENV_VAR} or --redis_password_file (and "
            "--redis_username).")

  def _bounded_get(self, key: str, max_bytes: int) -> Optional[bytes]:
    """The value at `key`, or None if absent; raises ValueError if larger than `max_bytes`."""
    value = self._call(self._client.getrange, key, 0, max_bytes)  # At most max_bytes + 1.
    if len(value) > max_bytes:
      raise ValueError(f"{key} in {self.url} holds more than {max_bytes} bytes.")
    return value or None  # GETRANGE of a missing key is empty; no value here is empty.

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

  def pop_unrolls(self, count: int, blob_bytes: int, block_seconds: float = 1.0) -> Popped:
    """Up to `count` of the oldest unrolls, each at most `blob_bytes` (larger ones are dropped
    unread and counted), waiting up to `block_seconds` for the first."""
    deadline = time.monotonic() + block_seconds
    while True:
      popped = self._pop(self._unrolls, count, blob_bytes, count * blob_bytes)
      if popped.blobs or popped.oversized or time.monotonic() >= deadline:
        return popped
      time.sleep(POLL_SECONDS)

  def _pop(self, key: str, count: int, item_bytes: int, total_bytes: int) -> Popped:
    result = self._call(self._pop_bounded, keys=[key], args=[count, item_bytes, total_bytes])
    return Popped(list(result[1:]), int(result[0]))

  def push_episodes(self, blob: bytes, keep: int = 1000) -> None:
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.rpush(self._episodes, blob)
      pipe.ltrim(self._episodes, -keep, -1)
      pipe.execute()
    self._call(transaction)

  def pop_episodes(self, blob_bytes: int, count: int = 100) -> Popped:
    return self._pop(self._episodes, count, blob_bytes, count * blob_bytes)

  # -- parameters, settings, the run's end ------------------------------------------------------

  def publish_params(self, blob: bytes, version: int, settings: Optional[bytes] = None) -> None:
    """The parameters and their version, with the learner's settings (written with every
    publish, so that a Redis restarted empty has them again at once)."""
    def transaction():
      pipe = self._client.pipeline(transaction=True)
      pipe.set(self._params, blob)
      pipe.set(self._version, version)
      if settings is not None:
        pipe.set(self._settings, settings)
      pipe.execute()
    self._call(transaction)

  def params_version(self) -> Optional[int]:
    return self.learner_state().params_version

  def fetch_params(self, max_bytes: int) -> Optional[bytes]:
    """The parameters blob (None: none yet); ValueError if larger than `max_bytes`."""
    return self._bounded_get(self._params, max_bytes)

  def learner_state(self) -> LearnerState:
    def read():
      pipe = self._client.pipeline(transaction=False)
      pipe.getrange(self._version, 0, 20)
      pipe.exists(self._learner)
      pipe.exists(self._done)
      version, learner, done = pipe.execute()
      return LearnerState(int(version) if version and version.isdigit() else None,
                          bool(learner), bool(done))
    return self._call(read)

  def begin_run(self) -> None:
    """A run starts (or resumes): not ended."""
    self._call(self._client.delete, self._done)

  def read_settings(self, max_bytes: int) -> Optional[bytes]:
    return self._bounded_get(self._settings, max_bytes)

  def mark_run_ended(self, give_up_seconds: float = 30.0) -> None:
    """Tells the actor hosts the run has ended. A run can end while Redis refuses writes (out of
    memory, restarting): this backs off and retries for up to `give_up_seconds`.

    Raises:
      StoreUnavailable: Redis still refused after that (the hosts then find the learner gone).
    """
    retrying(lambda: self._call(self._client.set, self._done, b"1"), lambda: False,
             "marking the run's end", give_up_seconds=give_up_seconds)

  # -- the one learner ---------------------------------------------------------------------------

  def claim_learner(self, learner_id: str, lease_seconds: int) -> Optional[str]:
    """Takes the learner key for `lease_seconds`; returns None, or the id that holds it."""
    def claim():
      if self._client.set(self._learner, learner_id, nx=True, ex=lease_seconds):
        return None
      holder = self._client.getrange(self._learner, 0, 200)
      return holder.decode("utf-8", "replace") if holder else "(expired just now)"
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
      pipe.getrange(self._dropped, 0, 20)
      length, dropped = pipe.execute()
      memory = self._client.info("memory").get("used_memory", 0)
      return StoreStats(int(length), int(dropped or 0), memory / 2**20)
    return self._call(read)

  def close(self) -> None:
    self._client.close()


def retrying(fn: Callable[[], T], stop_requested: Callable[[], bool], what: str,
             give_up_seconds: Optional[float] = None) -> Optional[T]:
  """Calls `fn` until it works, backing off while the store is unavailable; None on stop.

  Raises:
    StoreUnavailable: still unavailable after `give_up_seconds` (None: never gives up).
  """
  backoff_seconds = 0.5
  warned = False
  started = time.monotonic()
  while not stop_requested():
    try:
      result = fn()
      if warned:
        logging.info("Redis is back (%s).", what)
      return result
    except StoreUnavailable as e:
      if give_up_seconds is not None and time.monotonic() - started > give_up_seconds:
        raise StoreUnavailable(f"{e} (for {give_up_seconds:.0f} s, {what}); giving up.") from e
      if not warned:
        logging.warning("%s; retrying (%s).", e, what)
        warned = True
      deadline = time.monotonic() + backoff_seconds
      while time.monotonic() < deadline and not stop_requested():
        time.sleep(0.1)
      backoff_seconds = min(2 * backoff_seconds, _MAX_BACKOFF_SECONDS)
  return None
