"""The client's tools: the checked `Toolset`, the rules a call must pass, and the MCP server that hosts the tools for
the CLI (`ToolHost`, fed decoded control requests, writing into a list)."""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from typing import Any, NoReturn

import pytest
from maxproxy import errors, tools
from maxproxy.claude.events import ControlRequest, ToolCall, decode
from maxproxy.claude.mcp import PROTOCOL_FALLBACK, ToolHost

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def fn(name: str = "get_weather", parameters: Any = WEATHER, **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters, **function}}


def parse(*defs: dict[str, Any], choice: Any = None, parallel: bool | None = None) -> tools.Toolset:
    toolset = tools.toolset(list(defs), choice, parallel)
    assert toolset is not None
    return toolset


# --- Toolset parsing ---------------------------------------------------------------------------------------------


def test_valid_tools_parse_with_auto_choice_and_parallel_calls() -> None:
    toolset = parse(fn(description="Weather by city"), fn("lookup-2_x", {"type": "object", "properties": {}}))
    assert [t.name for t in toolset.tools] == ["get_weather", "lookup-2_x"]
    assert toolset.tools[0].schema == WEATHER
    assert toolset.tools[0].description == "Weather by city"
    assert (toolset.choice, toolset.forced, toolset.parallel) == ("auto", None, True)


@pytest.mark.parametrize(
    "function", [{"name": "f"}, {"name": "f", "parameters": {}}, {"name": "f", "parameters": None}]
)
def test_a_tool_without_parameters_gets_an_empty_object_schema(function: dict[str, Any]) -> None:
    toolset = parse({"type": "function", "function": function})
    assert toolset.tools[0].schema == {"type": "object", "properties": {}}


def test_a_schema_without_type_is_an_object_schema() -> None:
    toolset = parse(fn(parameters={"properties": {"a": {"type": "string"}}}))
    assert toolset.tools[0].schema == {"type": "object", "properties": {"a": {"type": "string"}}}


def test_a_64_character_name_is_allowed() -> None:
    assert parse(fn("a" * 64)).tools[0].name == "a" * 64


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_no_tools_is_no_toolset(choice: str | None) -> None:
    assert tools.toolset(None, choice, None) is None
    assert tools.toolset([], choice, False) is None


@pytest.mark.parametrize(
    ("defs", "choice", "param"),
    [
        ([{"type": "retrieval"}], None, "tools[0].type"),
        ([fn(), {"type": "code_interpreter", "function": {"name": "x"}}], None, "tools[1].type"),
        ([{"type": "function"}], None, "tools[0].function"),
        ([{"type": "function", "function": "get_weather"}], None, "tools[0].function"),
        ([fn("get weather")], None, "tools[0].function.name"),
        ([fn("a" * 65)], None, "tools[0].function.name"),
        ([fn("")], None, "tools[0].function.name"),
        ([{"type": "function", "function": {"parameters": WEATHER}}], None, "tools[0].function.name"),
        ([fn("f"), fn("g"), fn("f")], None, "tools[2].function.name"),
        ([fn(description=5)], None, "tools[0].function.description"),
        ([fn(parameters={"type": "array", "items": {}})], None, "tools[0].function.parameters"),
        ([fn(parameters=["city"])], None, "tools[0].function.parameters"),
        (
            [fn(parameters={"type": "object", "properties": {"a": {"type": "nonsense"}}})],
            None,
            "tools[0].function.parameters",
        ),
        ([fn()], {"type": "function", "function": {"name": "other"}}, "tool_choice"),
        ([fn()], "always", "tool_choice"),
        ([fn()], {"type": "function"}, "tool_choice"),
        ([fn()], {"type": "retrieval", "function": {"name": "get_weather"}}, "tool_choice"),
        (None, "required", "tool_choice"),
        ([], {"type": "function", "function": {"name": "get_weather"}}, "tool_choice"),
    ],
)
def test_bad_definitions_are_a_400_naming_the_field(defs: list[dict[str, Any]] | None, choice: Any, param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        tools.toolset(defs, choice, None)
    assert caught.value.status == 400
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", ("none", None)),
        ("required", ("required", None)),
        ({"type": "function", "function": {"name": "lookup"}}, ("function", "lookup")),
        ({"type": "function", "name": "lookup"}, ("function", "lookup")),  # the Responses API's shape
    ],
)
def test_tool_choice_forms(choice: Any, expected: tuple[str, str | None]) -> None:
    toolset = parse(fn(), fn("lookup"), choice=choice)
    assert (toolset.choice, toolset.forced) == expected


def test_parallel_tool_calls_false_is_kept_and_none_means_true() -> None:
    assert parse(fn(), parallel=False).parallel is False
    assert parse(fn(), parallel=None).parallel is True


def test_a_schema_with_a_dangling_ref_is_a_400() -> None:
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(errors.InvalidRequest) as caught:
        tools.toolset([fn(parameters=dangling)], None, None)
    assert caught.value.param == "tools[0].function.parameters"


def test_a_remote_ref_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[object] = []

    def urlopen(request: object, *args: object, **kwargs: object) -> NoReturn:
        fetched.append(request)
        raise OSError("no network in unit tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    remote = {"type": "object", "properties": {"a": {"$ref": "http://169.254.169.254/latest/meta-data"}}}
    with contextlib.suppress(Exception):  # a 400 or a refusal are both fine; a fetch is not
        parse(fn("f", remote)).refusal("f", {"a": 1}, accepted=0)
    assert fetched == []


# --- the rules a call must pass ----------------------------------------------------------------------------------


def test_a_valid_call_is_not_refused() -> None:
    assert parse(fn()).refusal("get_weather", {"city": "Paris", "days": 2}, accepted=0) is None
    assert parse(fn(), choice="required").refusal("get_weather", {"city": "Paris"}, accepted=3) is None


def test_choice_none_refuses_every_call() -> None:
    refusal = parse(fn(), choice="none").refusal("get_weather", {"city": "Paris"}, accepted=0)
    assert refusal is not None
    assert "tool_choice is none" in refusal


def test_a_named_choice_refuses_other_tools_but_not_its_own() -> None:
    toolset = parse(fn(), fn("lookup"), choice={"type": "function", "function": {"name": "lookup"}})
    refusal = toolset.refusal("get_weather", {"city": "Paris"}, accepted=0)
    assert refusal is not None
    assert "`lookup`" in refusal
    assert toolset.refusal("lookup", {"city": "Paris"}, accepted=0) is None


def test_an_unknown_tool_is_refused_by_name() -> None:
    refusal = parse(fn()).refusal("send_mail", {}, accepted=0)
    assert refusal is not None
    assert "`send_mail`" in refusal


def test_parallel_false_refuses_a_second_call_of_the_same_answer() -> None:
    toolset = parse(fn(), parallel=False)
    assert toolset.refusal("get_weather", {"city": "Paris"}, accepted=0) is None
    refusal = toolset.refusal("get_weather", {"city": "Rome"}, accepted=1)
    assert refusal is not None
    assert "one tool call" in refusal


@pytest.mark.parametrize("arguments", [["Paris"], "Paris", None, 3])
def test_arguments_that_are_not_an_object_are_refused(arguments: Any) -> None:
    assert parse(fn()).refusal("get_weather", arguments, accepted=0) == "Tool arguments must be a JSON object."


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "'city' is a required property"),
        ({"city": "Paris", "days": "two"}, "'two' is not of type 'integer' (at arguments.days)"),
    ],
)
def test_schema_violations_are_refused_naming_the_problem(arguments: dict[str, Any], problem: str) -> None:
    refusal = parse(fn()).refusal("get_weather", arguments, accepted=0)
    assert refusal is not None
    assert refusal.startswith("Invalid arguments for `get_weather`: ")
    assert problem in refusal


def test_a_nested_violation_names_its_path_with_list_indexes() -> None:
    schema = {"type": "object", "properties": {"stops": {"type": "array", "items": {"type": "string"}}}}
    refusal = parse(fn("route", schema)).refusal("route", {"stops": ["a", 7]}, accepted=0)
    assert refusal is not None
    assert "(at arguments.stops[1])" in refusal


# --- what the prompt says, what the CLI lists ---------------------------------------------------------------------


def test_auto_choice_with_parallel_calls_needs_no_instructions() -> None:
    assert parse(fn()).instructions() is None
    assert tools.Toolset().instructions() is None


@pytest.mark.parametrize(
    ("choice", "parallel", "present", "absent"),
    [
        ("none", None, "Do not call any tool", "at most one tool"),
        ("none", False, "Do not call any tool", "at most one tool"),  # nothing to call: no limit to mention
        ("required", None, "must call at least one", "at most one tool"),
        ({"type": "function", "function": {"name": "get_weather"}}, None, "the tool `get_weather`", "at most one"),
        ("auto", False, "Call at most one tool per answer", "must call"),
        ("required", False, "Call at most one tool per answer", "Do not call"),
    ],
)
def test_instructions_for_each_choice(choice: Any, parallel: bool | None, present: str, absent: str) -> None:
    text = parse(fn(), choice=choice, parallel=parallel).instructions()
    assert text is not None
    assert text.startswith("<tool_choice>\n")
    assert text.endswith("\n</tool_choice>")
    assert present in text
    assert absent not in text


def test_required_with_parallel_false_says_both() -> None:
    text = parse(fn(), choice="required", parallel=False).instructions()
    assert text is not None
    assert "must call at least one" in text
    assert "at most one tool" in text


def test_listing_marks_tools_read_only_and_raises_the_result_size() -> None:
    listing = parse(fn(description="Weather")).listing()
    assert listing == [
        {
            "name": "get_weather",
            "description": "Weather",
            "inputSchema": WEATHER,
            "annotations": {"readOnlyHint": True},
            "_meta": {"anthropic/maxResultSizeChars": tools.RESULT_LIMIT + 10_000, "anthropic/alwaysLoad": True},
        }
    ]
    assert listing[0]["_meta"]["anthropic/maxResultSizeChars"] > tools.RESULT_LIMIT


def test_the_listing_follows_the_tools_only() -> None:
    reordered = {"required": ["city"], "properties": WEATHER["properties"], "type": "object"}
    base = parse(fn(), fn("lookup"))
    assert parse(fn(parameters=reordered), fn("lookup")).lists_like(base)
    assert parse(fn(), fn("lookup"), choice="required", parallel=False).lists_like(base)
    assert not parse(fn(), fn("lookup", description="Other")).lists_like(base)
    assert not parse(fn("lookup"), fn()).lists_like(base)
    assert not parse(fn()).lists_like(base)
    assert not tools.Toolset().lists_like(base)


# --- ids and results ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool_use_id", ["toolu_01AbCdEf", "toolu_01A_b-c", "srvtoolu_x-y_z", "rpc0", "toolu_", "", "a.b/c d!é"]
)
def test_call_ids_are_letters_and_digits_only(tool_use_id: str) -> None:
    call = tools.call_id(tool_use_id)
    assert re.fullmatch(r"[A-Za-z0-9]+", call)
    assert call.startswith("call")


def test_call_id_drops_the_toolu_prefix_and_keeps_the_rest() -> None:
    assert tools.call_id("toolu_01AbCdEf") == "call01AbCdEf"
    assert tools.call_id("toolu_01A_b-c") == "call01Abc"


@pytest.mark.parametrize(
    ("client_id", "block"),
    [
        ("call_abc-1", "call_abc-1"),
        ("call.abc/1 x", "call_abc_1_x"),
        ("", "call"),
        ("x" * 200, "x" * 128),
    ],
)
def test_block_id_keeps_what_the_upstream_accepts(client_id: str, block: str) -> None:
    assert tools.block_id(client_id) == block


def test_result_text_is_kept_up_to_the_limit_and_cut_above_it_with_a_note() -> None:
    assert tools.result_text("x" * tools.RESULT_LIMIT) == "x" * tools.RESULT_LIMIT
    cut = tools.result_text("y" * (tools.RESULT_LIMIT + 5))
    assert cut.startswith("y" * tools.RESULT_LIMIT + "\n[maxproxy:")
    assert f"from {tools.RESULT_LIMIT + 5} to {tools.RESULT_LIMIT} characters" in cut
    assert len(cut) < tools.RESULT_LIMIT + 200


# --- ToolHost ----------------------------------------------------------------------------------------------------


class Host:
    """A ToolHost writing into a list and reporting into another."""

    def __init__(self, toolset: tools.Toolset | None = None) -> None:
        self.written: list[bytes] = []
        self.reported: list[ToolCall] = []
        self.host = ToolHost(self.written.append, self.reported.append)
        if toolset is not None:
            self.host.toolset = toolset

    def send(self, message: dict[str, Any], request_id: str = "r1") -> None:
        line = {
            "type": "control_request",
            "request_id": request_id,
            "request": {"subtype": "mcp_message", "server_name": "client", "message": message},
        }
        event = decode(json.dumps(line).encode())
        assert isinstance(event, ControlRequest)
        self.host.handle(event)

    def call(self, rpc_id: int, name: str, arguments: Any, tool_use_id: str, request_id: str = "r1") -> None:
        params = {"name": name, "arguments": arguments, "_meta": {"claudecode/toolUseId": tool_use_id}}
        self.send({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}, request_id)

    def responses(self) -> list[tuple[str, dict[str, Any]]]:
        """(request_id, JSON-RPC message) of every control_response written, and clears them."""
        out = []
        for raw in self.written:
            assert raw.endswith(b"\n")
            line = json.loads(raw)
            assert line["type"] == "control_response"
            assert line["response"]["subtype"] == "success"
            out.append((line["response"]["request_id"], line["response"]["response"]["mcp_response"]))
        self.written.clear()
        return out


def test_initialize_echoes_the_protocol_version_and_offers_tools() -> None:
    host = Host()
    host.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}})
    [(request_id, response)] = host.responses()
    assert request_id == "r1"
    assert response["id"] == 0
    assert response["result"]["protocolVersion"] == "2025-11-25"
    assert response["result"]["capabilities"] == {"tools": {"listChanged": True}}
    host.send({"jsonrpc": "2.0", "id": 1, "method": "initialize"}, "r2")
    assert host.responses()[0][1]["result"]["protocolVersion"] == PROTOCOL_FALLBACK


def test_a_notification_is_acknowledged_without_an_id() -> None:
    host = Host()
    host.send({"jsonrpc": "2.0", "method": "notifications/initialized"}, "r7")
    assert host.responses() == [("r7", {"jsonrpc": "2.0", "result": {}})]


def test_ping_and_tools_list() -> None:
    toolset = parse(fn(), fn("lookup"))
    host = Host(toolset)
    host.send({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "r1")
    host.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, "r2")
    assert host.responses() == [
        ("r1", {"jsonrpc": "2.0", "id": 1, "result": {}}),
        ("r2", {"jsonrpc": "2.0", "id": 2, "result": {"tools": toolset.listing()}}),
    ]


def test_an_unknown_method_is_a_json_rpc_error() -> None:
    host = Host()
    host.send({"jsonrpc": "2.0", "id": 9, "method": "resources/list"})
    [(_, response)] = host.responses()
    assert response["id"] == 9
    assert response["error"]["code"] == -32601
    assert "result" not in response


def test_a_valid_call_waits_unanswered_and_is_reported() -> None:
    host = Host(parse(fn()))
    host.call(3, "get_weather", {"city": "Paris"}, "toolu_1", request_id="r5")
    assert host.written == []
    assert host.reported == [
        ToolCall(tool_use_id="toolu_1", id="call1", name="get_weather", arguments='{"city":"Paris"}', refusal=None)
    ]
    assert list(host.host.pending) == ["toolu_1"]
    assert host.host.waiting


def test_an_invalid_call_is_answered_at_once_with_an_error_and_reported_refused() -> None:
    host = Host(parse(fn()))
    host.call(4, "get_weather", {"days": 2}, "toolu_2", request_id="r6")
    [(request_id, response)] = host.responses()
    [call] = host.reported
    assert call.refusal is not None
    assert "'city' is a required property" in call.refusal
    assert request_id == "r6"
    assert response == {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {"content": [{"type": "text", "text": call.refusal}], "isError": True},
    }
    assert not host.host.pending
    assert not host.host.waiting


def test_with_parallel_false_a_second_pending_call_is_refused() -> None:
    host = Host(parse(fn(), parallel=False))
    host.call(1, "get_weather", {"city": "Paris"}, "toolu_1")
    host.call(2, "get_weather", {"city": "Rome"}, "toolu_2", request_id="r2")
    assert [c.refusal is None for c in host.reported] == [True, False]
    assert [r for r, _ in host.responses()] == ["r2"]
    assert list(host.host.pending) == ["toolu_1"]


def test_answer_writes_each_result_and_clears_the_pending_calls() -> None:
    host = Host(parse(fn()))
    host.call(1, "get_weather", {"city": "Paris"}, "toolu_a", request_id="r1")
    host.call(2, "get_weather", {"city": "Rome"}, "toolu_b", request_id="r2")
    host.host.answer({"callb": "rainy", "calla": "sunny"})
    assert host.responses() == [
        ("r1", {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "sunny"}]}}),
        ("r2", {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "rainy"}]}}),
    ]
    assert not host.host.pending


def test_answer_without_every_result_is_a_400_and_answers_nothing() -> None:
    host = Host(parse(fn()))
    host.call(1, "get_weather", {"city": "Paris"}, "toolu_a")
    host.call(2, "get_weather", {"city": "Rome"}, "toolu_b")
    with pytest.raises(errors.InvalidRequest) as caught:
        host.host.answer({"calla": "sunny"})
    assert caught.value.status == 400
    assert "callb" in caught.value.message
    assert host.written == []
    assert list(host.host.pending) == ["toolu_a", "toolu_b"]


def test_matches_only_the_exact_set_of_waiting_calls() -> None:
    host = Host(parse(fn()))
    assert not host.host.matches({})
    host.call(1, "get_weather", {"city": "Paris"}, "toolu_a")
    assert host.host.matches({"calla": "x"})
    assert not host.host.matches({})
    assert not host.host.matches({"calla": "x", "callb": "y"})
    assert not host.host.matches({"callb": "y"})


def test_cancelled_removes_the_pending_call_with_that_rpc_id() -> None:
    host = Host(parse(fn()))
    host.call(1, "get_weather", {"city": "Paris"}, "toolu_a")
    host.call(2, "get_weather", {"city": "Rome"}, "toolu_b")
    host.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}, "r9")
    assert host.responses() == [("r9", {"jsonrpc": "2.0", "result": {}})]
    assert list(host.host.pending) == ["toolu_b"]


def test_a_broken_pipe_while_answering_does_not_raise() -> None:
    def gone(line: bytes) -> None:
        raise errors.CLIFailed("the process is gone")

    reported: list[ToolCall] = []
    host = ToolHost(gone, reported.append)
    host.toolset = parse(fn())
    event = decode(
        b'{"type":"control_request","request_id":"r1","request":{"subtype":"mcp_message","server_name":"client",'
        b'"message":{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"nope","arguments":{}}}}}'
    )
    assert isinstance(event, ControlRequest)
    host.handle(event)
    assert [c.tool_use_id for c in reported] == ["rpc0"]  # no _meta: the JSON-RPC id stands in


async def test_offer_of_the_same_listing_needs_no_relisting_but_takes_the_new_choice() -> None:
    host = Host()
    assert host.host.offer(tools.Toolset()) is None
    host.host.toolset = parse(fn())
    assert host.host.offer(parse(fn(), choice="none")) is None
    assert host.host.toolset.choice == "none"


async def test_offer_of_new_tools_is_done_once_the_cli_lists_them() -> None:
    host = Host()
    toolset = parse(fn())
    listed = host.host.offer(toolset)
    assert listed is not None
    assert not listed.done()
    host.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert listed.done()
    assert host.responses()[0][1]["result"]["tools"] == toolset.listing()
    assert host.host.offer(parse(fn())) is None


async def test_a_listing_that_drops_a_tool_a_turn_had_needs_a_new_server() -> None:
    host = Host().host

    def needs(h: ToolHost) -> bool:  # a call, so that mypy does not narrow the property between the checks
        return h.needs_server

    weather, time_ = parse(fn()), parse(fn(), fn("get_time"))
    host.offer(weather)
    assert not needs(host)  # nothing went to a turn yet: relisting is enough
    host.listed_for_turn()
    host.offer(time_)
    assert not needs(host)  # a superset: the CLI's kept tools are all in it
    host.listed_for_turn()
    host.offer(tools.Toolset())
    assert needs(host)
    assert host.replace_server() == ("client1", [f"mcp__client{n}" for n in range(1, 17)])
    assert host.server == "client1"
    assert not needs(host)  # nothing was offered under the new name
    changed = parse(fn(description="another text"))
    host.offer(weather)
    host.listed_for_turn()
    host.offer(changed)
    assert needs(host)  # same name, another definition
    assert host.replace_server() == ("client2", None)  # its permission rule came with the first update
