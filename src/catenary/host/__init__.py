"""Host loops: sans-IO drivers that feed the cores their inputs and hand out their effects."""
