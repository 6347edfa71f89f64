"""The replicated loglet: replication, nodesets, sequencer and log-server cores (sans-IO)."""
