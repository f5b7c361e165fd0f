"""The `server` fixture: a learner's env host server with a fake inference server."""

import pytest

from tests.distributed import fake_learner


@pytest.fixture(name="server")
def fixture_server():
  server = fake_learner.start_server()
  yield server
  server.close()
