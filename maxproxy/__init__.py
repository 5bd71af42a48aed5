"""maxproxy: the OpenAI chat API, answered by the Claude Code CLI on the user's own subscription."""

__version__ = "0.1.0"
