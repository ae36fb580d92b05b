"""Shared fixtures: one real local Ray for the whole session, temporary LanceDB directories."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A real 2-CPU Ray on loopback, started by this test session and shut down by it (never a broad stop)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
