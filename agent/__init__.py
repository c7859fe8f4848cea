"""SPY 0DTE agent: feed, detector and executor roles served over gRPC."""

__version__ = "0.1.0"
