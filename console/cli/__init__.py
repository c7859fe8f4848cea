"""``spyctl``: the scriptable operator CLI."""
