"""A tool-calling loop where a slow tool goes on in the background and the model polls it.

    OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_API_KEY=none OPENAI_MODEL=llama3.1 \\
        python examples/agent_loop.py "What do we know about the Rhine?"

Works with any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM,
Ollama, llama.cpp, LiteLLM ...). `research` takes longer than the manager's
timeout, so its call answers a task envelope at once; the model then calls
`check_task` (with `wait`, as `poll_after_s` suggests) until the result is there,
and answers. Uses the `openai` SDK when installed, else plain HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from typing import Any, Protocol

from taskward import Caller, TaskManager
from taskward.tools import ToolContext, ToolRegistry

SYSTEM = (
    "You answer with the help of tools. A tool that takes long answers "
    '{"status": "running", "task_id": ...}: call check_task with that task_id, '
    "and wait set to poll_after_s, until the status is completed, failed or cancelled. "
    "Then answer the user."
)
STEP_SECONDS = 0.5

registry = ToolRegistry()


@registry.tool
async def research(topic: str, ctx: ToolContext, depth: int = 3) -> dict[str, Any]:
    """Research a topic in depth. Slow: about half a second per level of depth.

    Args:
        topic: What to research.
        depth: How thorough, 1 to 10 levels.
    """
    depth = max(1, min(depth, 10))
    for level in range(depth):
        ctx.progress(level / depth, f"level {level + 1} of {depth}")
        await asyncio.sleep(STEP_SECONDS)
    return {"topic": topic, "findings": [f"{topic}: finding {n + 1}" for n in range(depth)]}


class ChatClient(Protocol):
    """One Chat Completions request: the assistant's message, as a dict."""

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]: ...


class SDKClient:
    """Through the `openai` SDK."""

    def __init__(self, client: Any, model: str) -> None:
        self.client, self.model = client, model

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        response = await self.client.chat.completions.create(
            model=self.model, messages=messages, tools=tools
        )
        message: dict[str, Any] = response.choices[0].message.model_dump(exclude_none=True)
        return message


class HTTPClient:
    """Plain HTTP (the standard library), for where the SDK is not installed."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key, self.model = api_key, model

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            data: dict[str, Any] = json.load(response)
        return data

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "tools": tools}
        data = await asyncio.to_thread(self._post, body)
        message: dict[str, Any] = data["choices"][0]["message"]
        return message


async def run(
    client: ChatClient, question: str, context: ToolContext, *, max_turns: int = 30
) -> list[dict[str, Any]]:
    """The loop: ask, run the tool calls, send their answers back, until the model answers.

    Returns the transcript (every message, the final answer last).
    """
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]
    tools = registry.schemas("openai")
    for _ in range(max_turns):
        message = await client.complete(messages, tools)
        messages.append(message)
        calls = message.get("tool_calls") or []
        if not calls:
            return messages
        for call in calls:
            function = call["function"]
            # Never raises for what the model sent: a bad call answers an error it can fix.
            output = await registry.call(function["name"], function.get("arguments"), context)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    raise RuntimeError(f"no answer after {max_turns} turns")


def make_client(base_url: str, api_key: str, model: str) -> tuple[ChatClient, Any]:
    """The SDK client if `openai` is installed (and the object to close), else plain HTTP."""
    try:
        import openai
    except ImportError:
        return HTTPClient(base_url, api_key, model), None
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key=api_key)
    return SDKClient(sdk, model), sdk


async def main(question: str, *, timeout: float = 1.0) -> list[dict[str, Any]]:
    base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    api_key = os.environ.get("OPENAI_API_KEY", "")
    model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
    client, closable = make_client(base_url, api_key, model)
    try:
        async with TaskManager(timeout=timeout, shutdown_grace=0) as tm:
            context = ToolContext(tm, Caller("example-user"))
            started = time.monotonic()
            transcript = await run(client, question, context)
    finally:
        if closable is not None:
            await closable.close()
    for message in transcript[1:]:
        role = message["role"]
        if message.get("tool_calls"):
            for call in message["tool_calls"]:
                function = call["function"]
                print(f"{role}: calls {function['name']}({function.get('arguments') or ''})")
        else:
            print(f"{role}: {message.get('content')}")
    print(f"({time.monotonic() - started:.1f}s, {len(transcript)} messages)")
    return transcript


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Research the river Rhine for me."))
