"""Interactive Brokers test support: a fake TWS server speaking the real socket protocol (fake_tws)."""
