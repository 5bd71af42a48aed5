"""OpenAI request → CLI turn: pure translation, no processes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from maxproxy import errors, prompt
from maxproxy.settings import Settings
from maxproxy.wire.chat import decode, to_turn

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def build(body: dict[str, Any], **settings: Any) -> prompt.Turn:
    config = Settings(**settings)
    return prompt.build(to_turn(decode(msgspec.json.encode(body))), config, config.model_table)


def request(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4", "messages": list(messages), **extra}


def test_single_user_message_is_one_querying_line() -> None:
    turn = build(request({"role": "user", "content": "hi"}))
    assert turn.launch.model == "sonnet"
    assert turn.lines == [
        {
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            "parent_tool_use_id": None,
            "session_id": "",
            "client_composed": True,
        }
    ]


def test_history_replays_in_order_with_non_querying_user_lines() -> None:
    turn = build(
        request(
            {"role": "user", "content": "My name is Alice"},
            {"role": "assistant", "content": "Hello Alice"},
            {"role": "user", "content": "What is my name?"},
        )
    )
    kinds = [(line["type"], line.get("shouldQuery", True)) for line in turn.lines]
    assert kinds == [("user", False), ("assistant", True), ("user", True)]
    assert turn.lines[1]["message"] == {"role": "assistant", "content": [{"type": "text", "text": "Hello Alice"}]}
    assert all(line.get("client_composed") for line in turn.lines if line["type"] == "user")


def test_consecutive_user_and_tool_messages_merge_into_one_user_turn() -> None:
    turn = build(
        request(
            {"role": "user", "content": "one"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "input_text", "text": "three"}]},
        )
    )
    assert [line["type"] for line in turn.lines] == ["user", "assistant", "user"]
    last = turn.lines[-1]["message"]["content"]
    assert [b["text"] for b in last] == ["[Result of tool call c1]\n42", "two", "three"]
    assert "f" in turn.lines[1]["message"]["content"][0]["text"]


def test_system_and_developer_prompts_are_embedded_at_the_head_of_the_first_user_message() -> None:
    turn = build(
        request(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Speak French."}]},
            {"role": "user", "content": "hi"},
        )
    )
    first = turn.lines[0]["message"]["content"]
    assert first[0] == {"type": "text", "text": "<system_prompt>\nBe brief.\n\nSpeak French.\n</system_prompt>"}
    assert first[1]["text"] == "hi"
    assert turn.launch.system_prompt is None


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_system_prompt_at_spawn_in_append_and_replace_modes(mode: str) -> None:
    turn = build(
        request({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}), system_prompt_mode=mode
    )
    assert turn.launch.system_prompt == "Be brief."
    assert turn.lines[0]["message"]["content"] == [{"type": "text", "text": "hi"}]


def test_image_data_url_becomes_a_base64_image_block() -> None:
    turn = build(
        request(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        )
    )
    image = turn.lines[0]["message"]["content"][1]
    assert image == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://example.invalid/cat.png", "data: URLs"),
        ("data:image/tiff;base64,AAAA", "Unsupported image type"),
        ("data:image/png;base64,", "not valid base64"),
        ("data:image/png;base64,@@@@", "not valid base64"),
    ],
)
def test_bad_images_are_a_400_naming_the_part(url: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        build(request({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}))
    assert fragment in caught.value.message
    assert caught.value.param == "messages[0].content[0].image_url"


def test_max_tokens_and_max_completion_tokens_mean_the_same_limit() -> None:
    assert build(request({"role": "user", "content": "hi"}, max_tokens=16)).options.max_output_tokens == 16
    assert build(request({"role": "user", "content": "hi"}, max_completion_tokens=9)).options.max_output_tokens == 9


def test_reasoning_effort_becomes_the_cli_effort() -> None:
    assert build(request({"role": "user", "content": "hi"}, reasoning_effort="minimal")).options.effort == "low"
    assert build(request({"role": "user", "content": "hi"}, reasoning_effort="high")).options.effort == "high"
    assert build(request({"role": "user", "content": "hi"})).options.effort is None
    with pytest.raises(errors.InvalidRequest):
        build(request({"role": "user", "content": "hi"}, reasoning_effort="turbo"))


def test_unknown_model_is_model_not_found_never_another_model() -> None:
    with pytest.raises(errors.ModelNotFound) as caught:
        build({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert caught.value.status == 404
    assert caught.value.param == "model"


def test_models_from_the_table_map_to_cli_names() -> None:
    for given, cli in [
        ("claude-opus-4", "opus"),
        ("haiku", "haiku"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
    ]:
        assert build({"model": given, "messages": [{"role": "user", "content": "x"}]}).launch.model == cli


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (request({"role": "user", "content": "hi"}, n=2), "n"),
        (request({"role": "user", "content": "hi"}, {"role": "assistant", "content": "prefill"}), "messages"),
        (request({"role": "user", "content": ""}), "messages[0].content"),
        (request({"role": "system", "content": "only a system prompt"}), "messages"),
    ],
)
def test_requests_the_cli_cannot_answer_are_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        build(body)
    assert caught.value.param == param


def test_history_opening_with_the_assistant_gets_a_user_marker_first() -> None:
    turn = build(request({"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "thanks"}))
    assert [line["type"] for line in turn.lines] == ["user", "assistant", "user"]


def test_empty_messages_inside_the_history_are_dropped() -> None:
    turn = build(
        request(
            {"role": "user", "content": ""}, {"role": "assistant", "content": None}, {"role": "user", "content": "hi"}
        )
    )
    assert len(turn.lines) == 1


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{", None),
        (b"[]", None),
        (b'{"model": "claude-sonnet-4"}', None),
        (b'{"model": "claude-sonnet-4", "messages": []}', "messages"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
            "messages[0].content[0].type",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    ],
)
def test_decoding_errors_are_400_with_the_param(raw: bytes, param: str | None) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        decode(raw)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_unknown_fields_and_message_extras_are_ignored() -> None:
    chat = decode(
        msgspec.json.encode(
            request(
                {"role": "user", "content": "hi", "name": "bob"},
                {"role": "assistant", "content": "yo", "reasoning_content": "hmm"},
                {"role": "user", "content": "again"},
                stream_options={"include_usage": True},
                store=False,
                prompt_cache_key="abc:0",
                brand_new_field=1,
            )
        )
    )
    assert chat.stream_options is not None
    assert chat.stream_options.include_usage
