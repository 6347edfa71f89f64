"""The client-facing request/reply protocol, shared by the server and the client."""
