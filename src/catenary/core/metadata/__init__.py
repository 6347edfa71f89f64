"""The metadata state machine: versioned keys, leases, watches, snapshots."""
