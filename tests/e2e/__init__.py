"""End-to-end tests: real clients → maxproxy → the real pinned CLI → the fake upstream on loopback."""

from __future__ import annotations

from openai.types.chat import ChatCompletionMessageParam

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
