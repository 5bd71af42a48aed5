"""The OpenAI-compatible HTTP layer: wire format, middlewares and handlers. It never touches a process."""
