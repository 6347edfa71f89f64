"""The node: configuration, data directory, wiring and lifecycle of one ``catenary server``."""
