"""Shared fixtures: a real agent process per test (or per module), on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import AgentProcess


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A durable agent (SQLite under tmp_path) for one test."""
    proc = AgentProcess(data_dir=tmp_path / "data").start(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def dev_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An in-memory (-dev) agent for one test."""
    proc = AgentProcess().start(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One -dev agent shared by a module's read-mostly tests (keeps the suite fast)."""
    tmp = tmp_path_factory.mktemp("agent")
    proc = AgentProcess().start(tmp)
    yield proc
    proc.stop()
