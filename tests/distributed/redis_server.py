"""A private redis-server for tests: a free loopback port, a password, no persistence."""

import os
import shutil
import socket
import subprocess
import time

import redis

PASSWORD = "test-redis-password-0123456789"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class RedisServer:
  """`start()` launches redis-server on `port` and waits until it answers; `stop()` ends it."""

  def __init__(self, port: int = 0, password: str = PASSWORD, maxmemory: str = "256mb"):
    if shutil.which("redis-server") is None:
      raise RuntimeError("redis-server is not installed; `make test` installs it "
                         "(apt-get install redis-server).")
    self.port = port or free_port()
    self.password = password
    self._maxmemory = maxmemory
    self._process = None

  @property
  def url(self) -> str:
    return f"redis://127.0.0.1:{self.port}/0"

  def start(self) -> "RedisServer":
    self._process = subprocess.Popen(
        ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", self.password, "--maxmemory", self._maxmemory,
         "--maxmemory-policy", "noeviction", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
      try:
        client.ping()
        return self
      except redis.ConnectionError:
        if time.monotonic() > deadline or self._process.poll() is not None:
          raise RuntimeError(f"redis-server did not start on port {self.port}.")
        time.sleep(0.05)

  def stop(self) -> None:
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      self._process.wait(timeout=20)
    self._process = None

  def environ(self):
    """The environment a child process needs to reach this server."""
    return dict(os.environ, REDIS_PASSWORD=self.password)
