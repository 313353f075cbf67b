"""examples/agent_loop.py against a scripted OpenAI-compatible server on a loopback port.

The server plays the model: it asks for the slow tool, polls it with check_task
until the result is there, then answers with what it found.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from taskward import Caller
from taskward.tools import ToolContext

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import ModuleType

    from taskward import TaskManager

EXAMPLE = Path(__file__).parent.parent / "examples" / "agent_loop.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reply(message: dict[str, Any]) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def tool_call(n: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{n}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def scripted_model(body: dict[str, Any]) -> dict[str, Any]:
    """The next assistant message, from the conversation so far."""
    messages = body["messages"]
    names = [t["function"]["name"] for t in body["tools"]]
    assert {"research", "check_task", "list_tasks", "stop_task"} <= set(names)
    last = messages[-1]
    if last["role"] == "user":
        return tool_call(1, "research", {"topic": "the Rhine", "depth": 3})
    answer = json.loads(last["content"])
    if answer.get("status") == "running":
        wait = min(answer.get("poll_after_s", 1), 1)
        return tool_call(len(messages), "check_task", {"task_id": answer["task_id"], "wait": wait})
    findings = answer["result"]["findings"]
    return {"role": "assistant", "content": f"Found {len(findings)} things: {findings[0]}"}


@pytest.fixture
def model_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The server's base URL and the requests it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/v1/chat/completions"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            data = json.dumps(reply(scripted_model(body))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_transcript(transcript: list[dict[str, Any]]) -> str:
    """The transcript went: research backgrounded, check_task until done, an answer. The
    task id polled is the one research answered."""
    tool_names = [m["tool_calls"][0]["function"]["name"] for m in transcript if m.get("tool_calls")]
    assert tool_names[0] == "research"
    assert len(tool_names) >= 2 and set(tool_names[1:]) == {"check_task"}
    outputs = [json.loads(m["content"]) for m in transcript if m["role"] == "tool"]
    assert outputs[0]["status"] == "running" and outputs[0]["tool"] == "research"
    task_id = outputs[0]["task_id"]
    assert all(o["task_id"] == task_id for o in outputs)
    assert outputs[-1]["status"] == "completed"
    assert all(o["status"] == "running" for o in outputs[:-1])
    final = transcript[-1]
    assert final["role"] == "assistant" and not final.get("tool_calls")
    content: str = final["content"]
    return content


async def test_the_example_runs_its_loop_through_the_sdk(
    model_server: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_url, received = model_server
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_MODEL", "scripted")
    example = load_example()
    transcript = await example.main("Tell me about the Rhine.", timeout=0.3)
    answer = check_transcript(transcript)
    assert answer == "Found 3 things: the Rhine: finding 1"
    assert all(body["model"] == "scripted" for body in received)
    assert len(received) == sum(1 for m in transcript if m["role"] == "assistant")
    printed = capsys.readouterr().out
    assert "assistant: calls research(" in printed and "assistant: Found 3 things" in printed


async def test_the_example_loop_over_plain_http(
    model_server: tuple[str, list[dict[str, Any]]], make_manager: Callable[..., TaskManager]
) -> None:
    base_url, _ = model_server
    example = load_example()
    client = example.HTTPClient(base_url, "test-key", "scripted")
    context = ToolContext(make_manager(timeout=0.3), Caller("ana"))
    transcript = await example.run(client, "Tell me about the Rhine.", context)
    assert check_transcript(transcript).startswith("Found 3 things")
