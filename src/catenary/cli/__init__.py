"""The ``catenary`` command line."""
