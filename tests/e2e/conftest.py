"""Fixtures for the end-to-end tests: a cluster with the e2e app in its workdir.

A failing test's report also carries every process log and the ledger of its cluster, so a
CI failure can be read without rerunning it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from bench.cluster import Cluster
from tests.e2e.harness import E2E, LOGS_MARK


@pytest.fixture
def e2e(cluster: Cluster) -> E2E:
    """The ``cluster`` fixture's processes (none started yet) serving ``e2eapp:app``."""
    return E2E(cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, Any]:
    report = yield
    e2e = getattr(item, "funcargs", {}).get("e2e")
    if report.failed and isinstance(e2e, E2E):
        message = str(call.excinfo.value) if call.excinfo is not None else ""
        if LOGS_MARK not in message:  # E2E.check and E2E.wait already attached them
            report.sections.append(("e2e cluster logs", e2e.logs()))
    return report
