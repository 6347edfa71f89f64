"""Sans-IO protocol cores.

Nothing under ``catenary.core`` performs I/O, reads a clock, starts a thread
or uses the module-level ``random`` functions.  Time arrives as ``tick()``
calls or ``now_ms`` arguments; randomness as an injected ``random.Random``.
``tests/test_layers.py`` enforces this.
"""
