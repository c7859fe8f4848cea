"""The detector role inside an agent: signals on the stream and in snapshots, local or upstream feed."""

from __future__ import annotations

from agent.roles.detector import detector_config
from agent.settings import DetectorSettings, load_settings
from console.client import AgentClient
from tests.conftest import AgentFactory, eventually


def test_detector_thresholds_come_from_settings() -> None:
    cfg = detector_config(
        DetectorSettings(commission_per_contract=1.0, max_leg_skew_ms=250, resolve_after_ms=20)
    )
    assert cfg.commission_per_contract == 1.0
    assert cfg.max_leg_skew_ns == 250_000_000
    assert cfg.resolve_after_ns == 20_000_000
    s = load_settings(detector={"volume_spike_mult": 12})
    assert detector_config(s.detector).volume_spike_mult == 12


async def test_injected_anomalies_become_signals_on_the_stream(start_agent: AgentFactory) -> None:
    agent = start_agent(roles="feed,detector", sim={"anomaly_rate_per_min": 60.0})
    async with AgentClient(agent.address) as client:
        seen: dict[str, str] = {}

        async def some_signals() -> bool:
            async for env in client.stream_once(topics=["signals"]):
                if env.HasField("signal"):
                    seen[env.signal.id] = env.signal.kind
                    assert env.signal.explanation
                    assert env.signal.status in ("new", "active", "resolved")
                if len(seen) >= 3:
                    return True
            return False

        await eventually(some_signals, timeout=30)
        snap = await client.snapshot()
        assert snap.HasField("smile")
        assert snap.smile.model == "svi"
        assert snap.smile.forward > 0
        assert len(snap.smile.strikes) == len(snap.smile.ivs) > 5
        info_health = await client.info()
        assert "detector" in info_health.roles
    assert agent.runtime.detector is not None
    assert agent.runtime.detector.evaluations > 10


async def test_clean_market_raises_no_arbitrage_signal(start_agent: AgentFactory) -> None:
    agent = start_agent(roles="feed,detector")
    await eventually(lambda: agent.runtime.detector is not None and agent.runtime.detector.evaluations > 100)
    snap = agent.runtime.log.snapshot()
    arbitrage = [s for s in snap.signals if s.is_arbitrage]
    assert arbitrage == []


async def test_detector_on_an_upstream_feed(start_agent: AgentFactory) -> None:
    feed = start_agent(agent_id="feed", sim={"anomaly_rate_per_min": 60.0})
    detector = start_agent(agent_id="detector", roles="detector", feed="upstream", upstream=feed.address)
    await eventually(
        lambda: len(detector.runtime.log.state.open_signals) + len(detector.runtime.log.state.resolved) > 0,
        timeout=30,
    )
    assert detector.runtime.log.state.smile is not None
    assert feed.runtime.log.state.open_signals == {}  # the feed agent detects nothing itself
