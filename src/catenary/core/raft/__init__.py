"""Raft consensus as a pure state machine (see node.py for the rules)."""
