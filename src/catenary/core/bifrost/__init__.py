"""The virtual log: chains of segments (sans-IO)."""
