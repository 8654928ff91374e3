"""Fixtures: one `veetance serve` for the session, on a free loopback port, with temporary
output, input and state folders and a ComfyUI models folder mapped to the tiny models."""

from __future__ import annotations

import os

import pytest

import harness


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return harness.make_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(tmp_path_factory, models_dir):
    """`veetance serve`; with VEETANCE_TEST_QUEUE=nats, a front door (`serve --queue`) with two
    `veetance worker`s behind it on a local `nats-server -js`, sharing its folders (the same
    client tests then run against the cluster, unchanged)."""
    if os.environ.get("VEETANCE_TEST_QUEUE") == "nats":
        from cluster import start_cluster

        cluster = start_cluster(tmp_path_factory.mktemp("cluster"), models_dir, workers=2)
        yield cluster.front
        cluster.stop()
        print(f"\n--- cluster logs (last lines) ---\n{cluster.logs()}")
        return
    srv = harness.start_server(tmp_path_factory.mktemp("serve"), models_dir)
    yield srv
    srv.stop()
    print(f"\n--- veetance serve log (last lines) ---\n{srv.log_tail(20)}")


@pytest.fixture
def tiny_prompt():
    """The klein text-to-image API prompt on the tiny models at 64x64 (a fresh copy)."""
    return harness.load_prompt()


_TIMINGS: dict[str, float] = {}


@pytest.fixture
def timings():
    """Wall times a test measured (name -> seconds), printed at the end of the session."""
    return _TIMINGS


def pytest_terminal_summary(terminalreporter):
    if _TIMINGS:
        terminalreporter.section("timings")
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
