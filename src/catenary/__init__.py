"""catenary: a replicated log service and a replicated metadata service."""

__version__ = "0.1.0"
