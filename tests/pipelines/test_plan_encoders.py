"""Actor-pool sizing: a small machine always keeps a CPU for reading and decoding."""

from __future__ import annotations

import pytest

from clipline.pipelines.plan import plan_encoders
from clipline.schemas.base import ConfigError
from clipline.schemas.config import ResourcesConfig


def test_two_cpus_give_one_encoder_and_leave_one_for_decode():
    plan = plan_encoders(ResourcesConfig(), {"CPU": 2.0})
    assert (plan.actors, plan.cpus, plan.gpus) == (1, 1.0, 0.0)
    assert plan.threads == 2  # decode is light: the encoder's threads also use the decode CPU


def test_torch_threads_share_the_cores_unless_set():
    assert plan_encoders(ResourcesConfig(), {"CPU": 16.0}).threads == 1  # 15 encoders, 16 cores
    assert plan_encoders(ResourcesConfig(encoder_cpus=4), {"CPU": 16.0}).threads == 5  # 3 encoders
    assert plan_encoders(ResourcesConfig(torch_threads=3), {"CPU": 2.0}).threads == 3
    assert plan_encoders(ResourcesConfig(encoder_cpus=2), {"CPU": 16.0, "GPU": 1.0}).threads == 2


def test_bigger_cpu_cluster_scales_the_pool():
    assert plan_encoders(ResourcesConfig(encoder_cpus=2), {"CPU": 16.0}).actors == 7


def test_gpus_are_used_when_present():
    plan = plan_encoders(ResourcesConfig(), {"CPU": 16.0, "GPU": 4.0})
    assert (plan.actors, plan.gpus) == (4, 1.0)
    assert plan_encoders(ResourcesConfig(encoder_gpus=0.5), {"CPU": 16.0, "GPU": 1.0}).actors == 2


def test_a_pool_that_would_starve_reads_is_refused():
    with pytest.raises(ConfigError, match=r"resources\.encoders"):
        plan_encoders(ResourcesConfig(encoders=2), {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"resources\.encoder_gpus"):
        plan_encoders(ResourcesConfig(encoder_gpus=1), {"CPU": 4.0})
