"""A feed agent taking its market from another agent's stream (``--feed upstream``)."""

from __future__ import annotations

from agent.domain import ChainUpdate, OptionQuote, Right
from agent.runtime import AgentThread
from agent.wire import snapshot_message
from console.client import AgentClient
from proto.spyops.v1 import spyops_pb2 as pb
from tests.conftest import AgentFactory, chain_key, eventually

# a market that stands still after its first full chain (one step a minute), so two agents can be compared
STILL = {"step_ms": 60_000}


def snap_of(agent: AgentThread) -> pb.Snapshot:
    return snapshot_message(agent.runtime.log.snapshot())


def same_market(a: AgentThread, b: AgentThread) -> bool:
    sa, sb = snap_of(a), snap_of(b)
    return (
        bool(sa.chain.quotes)
        and chain_key(sa.chain) == chain_key(sb.chain)
        and sa.underlying.last == sb.underlying.last
    )


def upstream_health(agent: AgentThread) -> str:
    health = agent.runtime.log.state.health
    if health is None:
        return ""
    return next((c.status.value for c in health.components if c.name == "upstream"), "")


async def test_upstream_agent_follows_restart_and_recovers(start_agent: AgentFactory) -> None:
    a = start_agent(agent_id="A", sim=STILL)
    port = a.port
    b = start_agent(agent_id="B", feed="upstream", upstream=a.address)

    async with AgentClient(b.address) as client:
        info = await client.info()
    assert (info.feed, info.upstream) == ("upstream", a.address)

    await eventually(lambda: same_market(a, b))
    assert upstream_health(b) == "ok"

    # a live update on A arrives at B
    head = a.runtime.log.state.book
    strike = min(k for k, _ in head.quotes)
    update = ChainUpdate(
        "SPY", head.expiry, (OptionQuote(strike, Right.CALL, 12.34, 12.40, 7, 8),), underlying=head.underlying
    )
    a.call(lambda: a.runtime.publish(update))

    def arrived() -> bool:
        q = b.runtime.log.state.book.quotes.get((strike, Right.CALL))
        return q is not None and (q.bid, q.ask, q.bid_size, q.ask_size) == (12.34, 12.40, 7, 8)

    await eventually(arrived)
    await eventually(lambda: same_market(a, b))

    # A dies: B says so, in a notice and in its health
    old_chain = chain_key(snap_of(b).chain)
    a.stop()
    await eventually(lambda: upstream_health(b) == "down")
    notices = [n.code for n in b.runtime.log.state.notices]
    assert "upstream.disconnected" in notices
    assert chain_key(snap_of(b).chain) == old_chain  # the last known chain is kept

    # A comes back (a new incarnation, a different market): B takes its snapshot and carries on
    a2 = start_agent(agent_id="A", port=port, sim={**STILL, "seed": 99, "spot": 600.0})
    assert a2.runtime.incarnation != a.runtime.incarnation
    await eventually(lambda: upstream_health(b) == "ok", timeout=15)
    await eventually(lambda: same_market(a2, b))
    assert 595 < b.runtime.log.state.book.underlying < 605
    assert b.runtime.upstream is not None
    assert b.runtime.upstream.incarnation == a2.runtime.incarnation
