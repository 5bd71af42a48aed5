"""Everything that knows about the Claude Code CLI: its events, how it is started, and the worker that drives it."""
