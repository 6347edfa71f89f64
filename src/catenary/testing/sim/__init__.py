"""Deterministic simulation: the real cores and storage under a simulated network, disk and clock.

One seed derives every random choice; a failing seed replays exactly with
``catenary sim metadata --seed N --nodes K --steps S``.  See
``docs/design/simulation.md``.
"""
