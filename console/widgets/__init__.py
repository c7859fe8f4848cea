"""Widgets of the console written for speed at full stream rate."""
