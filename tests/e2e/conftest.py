"""Fixtures for the end-to-end tests: a cluster with the e2e app in its workdir."""

from __future__ import annotations

import pytest

from bench.cluster import Cluster
from tests.e2e.harness import E2E


@pytest.fixture
def e2e(cluster: Cluster) -> E2E:
    """The ``cluster`` fixture's processes (none started yet) serving ``e2eapp:app``."""
    return E2E(cluster)
