"""Fixtures: `server`, a learner's env host server with a fake inference server; `processes`,
real processes of a test, each one ended (and checked ended) when the test is."""

import pytest

from tests.distributed import fake_learner
from tests.distributed.processes import Processes


@pytest.fixture(name="server")
def fixture_server():
  server = fake_learner.start_server()
  yield server
  server.close()


@pytest.fixture(name="processes")
def fixture_processes(tmp_path):
  processes = Processes(tmp_path)
  yield processes
  processes.close()
  assert all(p.poll() is not None for p in processes.procs)
