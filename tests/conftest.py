"""Shared fixtures: one real local Ray for the session, a moto S3 server on loopback.

Fake AWS credentials are set before anything starts, so Ray workers inherit them and botocore
never walks the credential chain out to an instance-metadata endpoint.
"""

from __future__ import annotations

import os

import pytest

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "clipline-test-key",
    "AWS_SECRET_ACCESS_KEY": "clipline-test-secret-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
os.environ.update(FAKE_AWS)


@pytest.fixture(scope="session")
def ray_local():
    """A real 2-CPU Ray on loopback, started by this test session and shut down by it (never a broad stop)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server in this process on a free loopback port; stopped through its own API."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket per test, named after the test."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
