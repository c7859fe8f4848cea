"""Market-data sources of the feed role: simulated market, replay (recordings, IB CSV), upstream agent."""
