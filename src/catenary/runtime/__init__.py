"""asyncio hosts: the only layer (with the faces above it) that awaits."""
