"""The items of stored responses, without I/O: the request's own input as item objects with ids, the input a
`previous_response_id` request goes on from, a 400's param counted in the client's own input, and list pages."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from maxproxy import errors
from maxproxy.conversation import canonical
from maxproxy.wire.responses import decode_request, items, to_chat
from maxproxy.wire.responses.request import ResponsesRequest


def request(**fields: Any) -> ResponsesRequest:
    return decode_request(msgspec.json.encode({"model": "claude-sonnet-4", **fields}))


def test_own_items_have_ids_and_the_item_shape() -> None:
    [one] = items.own_items(request(input="hi"), {})
    assert one["type"] == "message"
    assert one["content"] == [{"type": "input_text", "text": "hi"}]
    assert one["id"].startswith("msg_")
    sent = [
        {"role": "assistant", "content": "ok", "id": "msg_mine"},
        {"type": "function_call", "call_id": "call1", "name": "f", "arguments": "{}"},
        {"type": "item_reference", "id": "fco_old"},
    ]
    said, call, referenced = items.own_items(request(input=sent), {"fco_old": b'{"id": "fco_old", "x": 1}'})
    assert said["id"] == "msg_mine"
    assert said["content"][0]["type"] == "output_text"
    assert call["id"].startswith("fc_")
    assert call["status"] == "completed"
    assert referenced == {"id": "fco_old", "x": 1}
    with pytest.raises(errors.NotFound) as caught:
        items.own_items(request(input=sent), {})
    assert caught.value.param == "input[2].id"


def test_a_continuation_translates_like_the_whole_input_resent() -> None:
    response = {
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_2", "role": "assistant", "content": [{"type": "output_text", "text": "A"}]},
            {"type": "function_call", "id": "fc_3", "call_id": "call9", "name": "f", "arguments": "{}"},
        ]
    }
    history = items.own_items(request(input="Q"), {})
    asked = request(
        input=[{"type": "function_call_output", "call_id": "call9", "output": "R"}], previous_response_id="r"
    )
    whole = items.continued(history, response) + items.own_items(asked, {})
    expanded = to_chat(items.expanded(asked, whole))
    resent = to_chat(
        request(
            input=[
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"type": "function_call", "call_id": "call9", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call9", "output": "R"},
            ]
        )
    )
    assert [canonical(m) for m in expanded.messages] == [canonical(m) for m in resent.messages]


@pytest.mark.parametrize(
    ("param", "shifted"),
    [("input[5].call_id", "input[2].call_id"), ("input[1].content", "previous_response_id"), ("model", "model")],
)
def test_a_fault_names_the_clients_own_index(param: str, shifted: str) -> None:
    exc = items.shifted(errors.InvalidRequest(f"bad {param}", param=param), offset=3)
    assert exc.param == shifted


def test_pages() -> None:
    listed = [{"id": f"i{n}"} for n in range(5)]
    first = items.page(listed, limit=2, order="desc", after=None)
    assert [i["id"] for i in first["data"]] == ["i4", "i3"]
    assert (first["first_id"], first["last_id"], first["has_more"]) == ("i4", "i3", True)
    rest = items.page(listed, limit=20, order="desc", after="i3")
    assert [i["id"] for i in rest["data"]] == ["i2", "i1", "i0"]
    assert rest["has_more"] is False
    assert items.page([], limit=1, order="asc", after=None)["first_id"] is None
    with pytest.raises(errors.InvalidRequest) as caught:
        items.page(listed, limit=1, order="asc", after="nope")
    assert caught.value.param == "after"
