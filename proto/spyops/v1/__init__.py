"""Generated code of the ``spyops.v1`` wire contract (see ``spyops.proto``; never edit by hand)."""
