"""Three executor replicas with Lease election against a fake API server: only the leader sends
orders, a new leader takes over within the lease duration when the leader dies, never two at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import AgentRuntime, AgentThread
from console.client import AgentClient
from proto.spyops.v1 import spyops_pb2 as pb
from tests.agent.executor.fake_kube import FakeKube
from tests.agent.test_executor_role import atm_call, buy, cmd, executor_settings
from tests.conftest import agent_settings, eventually

LEASE = {"lease_duration_s": 2.0, "renew_deadline_s": 1.0, "retry_period_s": 0.2}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.close()


def replica(tmp_path: Path, kube: FakeKube, n: int) -> AgentThread:
    folder = tmp_path / f"replica-{n}"
    folder.mkdir()
    lease = {"enabled": True, "api_url": kube.url, "identity": f"replica-{n}", **LEASE}
    settings = agent_settings(f"replica{n}", **executor_settings(folder, lease=lease))
    return AgentRuntime(settings).start_in_thread()


def leaders(replicas: list[AgentThread]) -> list[int]:
    return [i for i, r in enumerate(replicas) if r.runtime.executor is not None and r.runtime.executor.leader]


async def test_only_the_leader_trades_and_a_standby_takes_over(tmp_path: Path, kube: FakeKube) -> None:
    replicas = [replica(tmp_path, kube, n) for n in range(3)]
    alive = list(replicas)
    try:
        await eventually(lambda: len(leaders(replicas)) == 1, timeout=10)
        (lead,) = leaders(replicas)
        for i, r in enumerate(replicas):
            async with AgentClient(r.address) as client:
                q = await atm_call(client)
                result = await client.execute(cmd(submit_order=buy(q, 1, q.ask + 0.05)))
                if i == lead:
                    assert result.accepted, result.message
                else:
                    assert result.code == "not_leader"
        # never two leaders, sampled while the leader dies and a standby takes over
        most = 0
        killed_at = time.monotonic()
        replicas[lead].stop()
        alive.remove(replicas[lead])
        new_leader_after = None
        while time.monotonic() - killed_at < 5.0:
            current = leaders(alive)
            most = max(most, len(current))
            if current and new_leader_after is None:
                new_leader_after = time.monotonic() - killed_at
            await asyncio.sleep(0.005)
        assert most == 1
        assert new_leader_after is not None
        assert new_leader_after <= LEASE["lease_duration_s"] + 1.0  # within the lease duration (+ a retry)
        (new,) = leaders(alive)
        async with AgentClient(alive[new].address) as client:
            q = await atm_call(client)
            result = await client.execute(cmd(submit_order=buy(q, 1, q.ask + 0.05)))
            assert result.accepted, result.message
            risk = (await client.snapshot()).risk
            assert risk.leader
            assert risk.lease_epoch >= 2  # a new term, fencing the old leader's intents
    finally:
        for r in alive:
            r.stop()


def test_replica_settings_without_an_api_server_fail_clearly(tmp_path: Path) -> None:
    from agent.server import AgentStartError

    lease = {"enabled": True, **LEASE}  # no api_url and not in a cluster
    settings = agent_settings("lonely", **executor_settings(tmp_path, lease=lease))
    with pytest.raises(AgentStartError, match="Leader election runs only in the cluster"):
        AgentRuntime(settings).start_in_thread()
    _ = pb  # the contract module is imported for the shared helpers' types
