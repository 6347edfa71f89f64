"""Sans-IO host loops: what sits between a core and the world, written once.

The asyncio hosts (``runtime/``) and the simulator (``testing/sim/``) both drive
these objects; they differ only in how they persist, send and keep time.
"""
