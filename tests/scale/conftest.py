"""A small local Ray cluster (2 CPUs, no dashboard) per test module, as CI's machine has 2 cores.

Modules that use Ray start with `pytest.importorskip("ray")`: without the extra
(`bash start.sh install ray`) they are skipped, with the reason shown.
"""

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Started by the module that needs it and shut down after it; yields its GCS address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
