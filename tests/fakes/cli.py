"""A fake `claude` for the faults the real CLI cannot be made to produce. Never a replacement for the real CLI in
the happy paths: the tests use it only to crash mid-stream, write garbage, stream forever, ignore SIGTERM and
interrupts, fail at start-up, start slowly ("slow_start": 1.5 s before `initialize` is answered), leave a
grandchild behind, or not know `list_models` ("no_list_models"). In "chaos" mode each turn's prompt picks its fault
("crash", "garbage", "hang", "endless"; anything else answers).

Usage: cli.py MODE [claude flags...]; it speaks just enough stream-json (init, text deltas, result, control
responses) for maxproxy to get to the fault.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

MODE = sys.argv[1]
_out = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def delta(text: str) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        "api_message_id": "msg_fakecli",
        "parent_tool_use_id": None,
    }


def start_message() -> None:
    emit({"type": "system", "subtype": "init", "model": "fake", "apiKeySource": "none", "session_id": "s"})
    emit(
        {
            "type": "stream_event",
            "event": {"type": "message_start", "message": {"id": "msg_fakecli", "usage": {"input_tokens": 1}}},
            "api_message_id": "msg_fakecli",
            "parent_tool_use_id": None,
        }
    )


def result(subtype: str = "success", is_error: bool = False) -> None:
    emit(
        {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "result": "",
            "num_turns": 1,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    )


def main() -> None:
    if MODE == "startup_fail":
        sys.stderr.write("error: unknown option '--frobnicate'\n")
        sys.exit(1)
    if MODE == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    interrupted = threading.Event()

    def read() -> None:
        # Control requests are answered here, so they are served while a turn runs.
        for raw in sys.stdin:
            line = json.loads(raw)
            if line["type"] != "control_request":
                lines.put(line)
                continue
            subtype = line["request"]["subtype"]
            if subtype == "interrupt" and MODE == "ignore_sigterm":
                continue
            if subtype == "initialize" and MODE == "slow_start":
                time.sleep(1.5)  # a start that takes a while: the window in which requests race for room
            answers = {
                "initialize": {"claude_code_version": "0.0.0-fake", "account": {}},
                "rewind_conversation": {"rewound": True},
            }
            answer = answers.get(subtype, {})
            if subtype == "list_models" and MODE == "no_list_models":  # an older CLI: the request is unknown to it
                error = f"Unsupported control request subtype: {subtype}"
                response = {"subtype": "error", "request_id": line["request_id"], "error": error}
                emit({"type": "control_response", "response": response})
                continue
            emit(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": line["request_id"], "response": answer},
                }
            )
            if subtype == "interrupt":
                interrupted.set()
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        line = lines.get()
        if line is None:
            if MODE == "ignore_sigterm":
                time.sleep(3600)  # ignores stdin EOF as well: only SIGKILL ends it
            return
        if line.get("shouldQuery") is False or line["message"]["content"] == "/clear":
            result()
            continue
        content = line["message"]["content"]
        run_turn(interrupted, json.dumps(content))


def run_turn(interrupted: threading.Event, prompt: str) -> None:
    mode = MODE
    if MODE == "chaos":  # the prompt picks the fault, so a test can mix them
        mode = next((m for m in ("crash", "garbage", "hang", "endless") if m in prompt), "answer")
    interrupted.clear()
    start_message()
    if mode == "hang":
        interrupted.wait()
        result("error_during_execution", True)
        return
    if mode == "crash":
        emit(delta("partial "))
        sys.stderr.write("fatal: something broke\n")
        sys.stderr.flush()
        os._exit(3)
    if mode == "garbage":
        emit(delta("partial "))
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
        time.sleep(3600)
    if MODE == "grandchild":
        subprocess.Popen(["sleep", "3600"])  # a tool's process, left running in the worker's group
        time.sleep(3600)
    if mode in ("endless", "ignore_sigterm"):
        while not interrupted.is_set():
            emit(delta("la "))
            time.sleep(0.05)
        result("error_during_execution", True)
        return
    emit(delta("fake answer"))
    result()


if __name__ == "__main__":
    main()
