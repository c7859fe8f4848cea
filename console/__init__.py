"""Operator side: the Textual console (``spy-console``) and the CLI (``spyctl``), over the contract only."""
