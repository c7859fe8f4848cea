"""Roles an agent runs on its event log (the feed's sources live in ``agent.feeds``)."""
