"""Real clients' Responses requests, as recorded between each client and `make run` (docs/clients.md says how):
Codex CLI 0.171.0, the OpenAI Agents SDK 0.24.0 and OpenClaw 2026.9.6, each a tool follow-up that replays the
whole conversation. `tests/fixtures/responses/` holds the bodies as sent, with long prompt texts and tool
descriptions cut (marked in place); every request must translate as it did when the client ran through maxproxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from maxproxy.turns.messages import AssistantMessage, DeveloperMessage, SystemMessage, ToolMessage, UserMessage
from maxproxy.wire.responses import Translated, decode_request, to_chat

FIXTURES = Path(__file__).parent / "fixtures" / "responses"


def recorded(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


def translated(name: str) -> Translated:
    return to_chat(decode_request((FIXTURES / f"{name}.json").read_bytes()))


def tool_names(t: Translated) -> set[str]:
    return {tool["function"]["name"] for tool in t.tools or []}


def calls_and_results(t: Translated) -> tuple[list[str], list[str]]:
    calls = [c.id for m in t.messages if isinstance(m, AssistantMessage) for c in m.tool_calls or []]
    results = [m.tool_call_id for m in t.messages if isinstance(m, ToolMessage)]
    return calls, results


@pytest.mark.parametrize("name", ["codex-namespace-follow-up", "codex-reasoning-follow-up"])
def test_codex(name: str) -> None:
    body = recorded(name)
    assert (body["stream"], body["store"], body["include"]) == (True, False, ["reasoning.encrypted_content"])
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)
    assert "instructions" not in body
    assert "max_output_tokens" not in body
    assert [t["type"] for t in body["tools"]].count("namespace") == 1
    assert all(item.get("id") for item in body["input"])  # Codex puts an id on every item
    t = translated(name)
    # Nine tools: the namespace's five functions flattened beside the seven others; web_search dropped and named.
    assert len(tool_names(t)) == 12
    assert {"exec_command", "close_agent", "spawn_agent", "wait_agent"} <= tool_names(t)
    assert t.namespaces["close_agent"] == "multi_agent_v1"
    assert "tools.web_search" in t.ignored
    assert "include" in t.ignored
    assert t.store is False
    # Its prompt comes as two developer messages, then the environment and the user's text.
    assert [type(m) for m in t.messages[:4]] == [DeveloperMessage, DeveloperMessage, UserMessage, UserMessage]
    calls, results = calls_and_results(t)
    assert calls == results
    assert len(calls) == 1


def test_codex_replays_reasoning_with_null_content() -> None:
    [reasoning] = [i for i in recorded("codex-reasoning-follow-up")["input"] if i["type"] == "reasoning"]
    assert (reasoning["content"], reasoning["encrypted_content"]) == (None, None)
    assert reasoning["summary"][0]["type"] == "summary_text"
    assert translated("codex-reasoning-follow-up").effort == "high"


def test_codex_replays_the_namespace_on_the_call() -> None:
    [call] = [i for i in recorded("codex-namespace-follow-up")["input"] if i["type"] == "function_call"]
    assert (call["name"], call["namespace"]) == ("close_agent", "multi_agent_v1")


def test_agents_sdk() -> None:
    body = recorded("agents-sdk-reasoning-follow-up")
    assert "store" not in body
    assert "previous_response_id" not in body
    assert "stream" not in body
    assert body["include"] == []
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    [tool] = body["tools"]
    assert tool["strict"] is True
    assert tool["parameters"]["additionalProperties"] is False
    t = translated("agents-sdk-reasoning-follow-up")
    assert isinstance(t.messages[0], SystemMessage)  # `instructions`
    assert t.store is True
    assert t.max_output_tokens == 2000
    assert t.summary
    calls, results = calls_and_results(t)
    assert calls == results == ["callfake32"]
    assert isinstance(t.messages[-1], UserMessage)


@pytest.mark.parametrize(
    ("name", "role"), [("openclaw-tool-follow-up", SystemMessage), ("openclaw-reasoning-follow-up", DeveloperMessage)]
)
def test_openclaw(name: str, role: type[Any]) -> None:
    body = recorded(name)
    assert (body["stream"], body["store"], body["max_output_tokens"]) == (True, False, 8192)
    assert "tool_choice" not in body
    assert "instructions" not in body
    assert all(t["type"] == "function" and "strict" not in t for t in body["tools"])
    t = translated(name)
    assert len(tool_names(t)) == 14
    assert {"exec", "read", "write", "computer"} <= tool_names(t)
    # The system prompt is an input message: `system`, or `developer` when the model is marked reasoning.
    assert isinstance(t.messages[0], role)
    # It rewrites the call id maxproxy issued (`callfake62` → `call_callfake62_fc_<item id>_<hash>`) in both the
    # call and its output: they still pair, and the id maxproxy issued is recovered.
    [call] = [i for i in body["input"] if i["type"] == "function_call"]
    assert call["call_id"].startswith("call_callfake")
    assert t.rewritten_ids == {call["call_id"]: call["call_id"].split("_")[1]}
    calls, results = calls_and_results(t)
    assert calls == results == [call["call_id"].split("_")[1]]
