"""Interactive Brokers (IB Gateway / TWS) through ``ib_async``: connection, market data feed, broker.

``ib_async`` is the maintained continuation of ``ib_insync`` (same API). Never install both: each ships
its own top-level ``eventkit`` package and whichever installs last overwrites the other's files.
"""
