"""set_output_redirect on one instance: each platform's request format, and deliveries that
fail on purpose (5xx, 429, slow answers, refused connections, rejections)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from receivers import Answer, Receiver, free_port
from taskward import Caller, TaskManager
from taskward.redirect import DeliveryResult, RedirectMessage, register_adapter
from taskward.redirect.platforms import DiscordAdapter, SlackAdapter, TelegramAdapter
from taskward.redirect.signing import SignatureError, generate_secret, verify
from taskward.redirect.webhook import WebhookAdapter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from taskward.redirect import PlatformAdapter

ANA = Caller("ana")
SECRET = generate_secret()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


async def settled(
    tm: TaskManager, task_id: str, timeout: float = 15.0, caller: Caller = ANA
) -> dict[str, Any]:
    """The task's redirect once its delivery is delivered or failed."""
    deadline = time.monotonic() + timeout
    while True:
        rec = await tm.get_record(task_id, caller=caller)
        assert rec is not None
        if rec.redirect is not None and rec.redirect["state"] in ("delivered", "failed"):
            return rec.redirect
        assert time.monotonic() < deadline, f"not settled: {rec.redirect}"
        await asyncio.sleep(0.02)


async def finish_with(value: Any, after: float = 0.0) -> Any:
    await asyncio.sleep(after)
    return value


async def fail_after(after: float) -> None:
    await asyncio.sleep(after)
    raise ValueError("no such file")


def manager(
    make_manager: Callable[..., TaskManager], adapters: dict[str, PlatformAdapter], **options: Any
) -> TaskManager:
    return make_manager(
        redirect_adapters=adapters,
        **{"delivery_attempt_timeout": 1.0, "delivery_timeout": 20.0, **options},
    )


# -- the webhook ----------------------------------------------------------------------


async def test_a_webhook_delivery_is_signed_as_standard_webhooks(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    adapter = WebhookAdapter(receiver.url + "/hooks/{channel_id}", SECRET)
    tm = manager(make_manager, {"webhook": adapter})
    task_id = await tm.create_task(finish_with({"answer": "é"}, 0.2), "chat", caller=ANA, name="q")
    assert await tm.set_output_redirect(task_id, "room-1", "webhook", caller=ANA)
    rec = await tm.get_record(task_id, caller=ANA)
    assert rec is not None and rec.redirect is not None
    assert (rec.redirect["channel_id"], rec.redirect["platform"]) == ("room-1", "webhook")
    assert rec.redirect["state"] is None  # running: nothing enqueued yet
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and state["attempts"] == 1
    [got] = receiver.requests
    assert got.path == "/hooks/room-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == state["delivery_id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 10
    assert got.headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, got.headers, got.body) == state["delivery_id"]
    with pytest.raises(SignatureError):
        verify(SECRET, got.headers, got.body + b" ")
    with pytest.raises(SignatureError):
        verify(generate_secret(), got.headers, got.body)
    body = got.json()
    assert body["type"] == "task.finished" and body["timestamp"].endswith("+00:00")
    data = body["data"]
    assert data["task_id"] == task_id and data["status"] == "completed"
    assert data["result"] == {"answer": "é"} and data["text"] == '{"answer":"é"}'
    assert (data["name"], data["channel_id"], data["item_id"]) == ("q", "room-1", "chat")
    assert data["user_id"] == "ana" and data["error"] is None


async def test_a_finished_task_is_delivered_at_once_and_only_once_per_target(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url + "/h")})
    task_id = await tm.create_task(fail_after(0), caller=ANA)
    await tm.wait(task_id, caller=ANA)
    assert await tm.set_output_redirect(task_id, "c1", "webhook", caller=ANA)
    assert await tm.set_output_redirect(task_id, "c1", "webhook", caller=ANA)  # the same: once
    state = await settled(tm, task_id)
    assert state["state"] == "delivered"
    [got] = receiver.requests
    assert "webhook-signature" not in got.headers  # no secret, no signature
    data = got.json()["data"]
    assert data["status"] == "failed" and data["result"] is None
    assert data["error"] == {"type": "ValueError", "message": "no such file"}
    assert data["text"].endswith("failed: ValueError: no such file")
    assert await tm.set_output_redirect(task_id, "c2", "webhook", caller=ANA)  # another: once more
    await settled(tm, task_id)
    for _ in range(100):
        if len(receiver.requests) == 2:
            break
        await asyncio.sleep(0.02)
    assert [r.json()["data"]["channel_id"] for r in receiver.requests] == ["c1", "c2"]
    assert len(receiver.unique_ids()) == 2


async def test_an_unknown_or_foreign_task_takes_no_redirect(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url)})
    task_id = await tm.create_task(finish_with("x"), caller=ANA)
    assert not await tm.set_output_redirect("missing", "c", "webhook", caller=ANA)
    assert not await tm.set_output_redirect(task_id, "c", "webhook", caller=Caller("bo"))
    rec = await tm.get_record(task_id, caller=ANA)
    assert rec is not None and rec.redirect is None
    assert await tm.set_output_redirect(task_id, "c", "webhook", caller=Caller("root", True))


async def test_bad_arguments_are_refused(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url)})
    task_id = await tm.create_task(finish_with("x"), caller=ANA)
    with pytest.raises(ValueError, match="no redirect adapter"):
        await tm.set_output_redirect(task_id, "c", "carrier-pigeon", caller=ANA)
    with pytest.raises(ValueError, match="at least"):
        await tm.set_output_redirect(task_id, "c", "webhook", 10, caller=ANA)
    with pytest.raises(TypeError):
        await tm.set_output_redirect(task_id, "c", "webhook", True, caller=ANA)
    with pytest.raises(ValueError):
        await tm.set_output_redirect(task_id, "bad channel", "webhook", caller=ANA)
    with pytest.raises(TypeError):
        await tm.set_output_redirect(task_id, "c", None, caller=ANA)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TaskManager(delivery_timeout=0)
    with pytest.raises(TypeError):
        TaskManager(redirect_adapters=[("webhook", None)])  # type: ignore[arg-type]


async def test_max_chars_cuts_the_text_with_a_marker(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url)})
    task_id = await tm.create_task(finish_with("é\u0301" * 500), caller=ANA)
    assert await tm.set_output_redirect(task_id, "c", "webhook", 100, caller=ANA)
    await settled(tm, task_id)
    text = receiver.requests[0].json()["data"]["text"]
    assert len(text) <= 100 and text.endswith("characters]")
    kept = text[: text.index("…")]
    assert kept == "é\u0301" * (len(kept) // 2)
    assert f"[truncated {1000 - len(kept)} characters]" in text


# -- failures on purpose --------------------------------------------------------------


async def test_5xx_answers_are_retried_with_the_same_id_until_one_succeeds(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(503, "busy"), Answer(500, "oops"))
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url, SECRET)})
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "webhook", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and state["attempts"] == 3
    assert state["last_error"] == "HTTP 500: oops"
    assert len(receiver.requests) == 3
    assert receiver.unique_ids() == {state["delivery_id"]}
    for got in receiver.requests:  # each attempt signed afresh, all valid
        verify(SECRET, got.headers, got.body)
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75  # backoff: 0.5 s then 1 s, +-20%


async def test_a_429_waits_for_retry_after(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(429, "slow down", {"Retry-After": "2"}))
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url)})
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "webhook", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and state["attempts"] == 2
    first, second = receiver.requests
    assert second.at - first.at >= 1.95
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_a_slow_answer_times_out_and_is_retried(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(200, delay=2.0))
    tm = manager(
        make_manager, {"webhook": WebhookAdapter(receiver.url)}, delivery_attempt_timeout=0.5
    )
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "webhook", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and state["attempts"] == 2
    assert "no answer within 0.5 s" in state["last_error"]
    assert len(receiver.unique_ids()) == 1  # two requests, one delivery id


async def test_refused_connections_are_retried_until_the_delivery_timeout(
    make_manager: Callable[..., TaskManager],
) -> None:
    token = "123456:SECRET-TOKEN"
    adapter = TelegramAdapter(token, api_url=f"http://127.0.0.1:{free_port()}")
    tm = manager(make_manager, {"telegram": adapter}, delivery_timeout=2.0)
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    started = time.monotonic()
    await tm.set_output_redirect(task_id, "-100123", "telegram", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "failed" and state["attempts"] >= 2
    assert state["last_error"].startswith(f"gave up after {state['attempts']} attempt(s): ")
    assert "ConnectError: could not reach 127.0.0.1" in state["last_error"]
    assert token not in json.dumps(state)  # the token is in the URL: never in an error
    assert time.monotonic() - started < 5


async def test_a_4xx_is_not_retried(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(404, "no such hook"))
    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url)})
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "webhook", caller=ANA)
    state = await settled(tm, task_id)
    assert (state["state"], state["attempts"]) == ("failed", 1)
    assert state["last_error"] == "HTTP 404: no such hook"


async def test_an_adapter_that_raises_is_retried_without_its_message(
    make_manager: Callable[..., TaskManager], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    class Flaky:
        async def deliver(self, message: RedirectMessage) -> DeliveryResult:
            calls.append(message.idempotency_key)
            if len(calls) == 1:
                raise RuntimeError("https://example.invalid/?token=hunter2")
            return DeliveryResult.delivered()

        async def aclose(self) -> None:
            return None

    tm = manager(make_manager, {"flaky": Flaky()})
    task_id = await tm.create_task(finish_with("done"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "flaky", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and len(set(calls)) == 1 and len(calls) == 2
    assert state["last_error"] == "the adapter raised RuntimeError"


async def test_a_registered_platform_is_made_by_its_factory(
    make_manager: Callable[..., TaskManager],
) -> None:
    sent: list[str] = []

    class Memo:
        async def deliver(self, message: RedirectMessage) -> DeliveryResult:
            sent.append(message.text)
            return DeliveryResult.delivered()

        async def aclose(self) -> None:
            return None

    register_adapter("memo-test", Memo)
    tm = make_manager()
    task_id = await tm.create_task(finish_with("hello"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "memo-test", caller=ANA)
    await settled(tm, task_id)
    assert sent == ["hello"]


# -- chat platforms -------------------------------------------------------------------


async def test_slack_chat_post_message_with_a_bot_token(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(
        Answer(200, {"ok": True, "ts": "1.2"}),
        Answer(200, {"ok": False, "error": "channel_not_found"}),
    )
    adapter = SlackAdapter(bot_token="xoxb-secret", api_url=receiver.url + "/api")
    tm = manager(make_manager, {"slack": adapter})
    task_id = await tm.create_task(finish_with("hi *there*"), caller=ANA)
    await tm.set_output_redirect(task_id, "C0123", "slack", caller=ANA)
    assert (await settled(tm, task_id))["state"] == "delivered"
    [got] = receiver.requests
    assert got.path == "/api/chat.postMessage"
    assert got.headers["authorization"] == "Bearer xoxb-secret"
    assert got.json() == {"channel": "C0123", "text": "hi *there*"}
    other = await tm.create_task(finish_with("again"), caller=ANA)
    await tm.set_output_redirect(other, "C404", "slack", caller=ANA)
    state = await settled(tm, other)
    assert (state["state"], state["last_error"]) == ("failed", "refused: channel_not_found")


async def test_slack_incoming_webhook(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(200, "ok"))
    adapter = SlackAdapter(webhook_url=receiver.url + "/services/T/B/X")
    tm = manager(make_manager, {"slack": adapter})
    task_id = await tm.create_task(finish_with("x" * 50_000), caller=ANA)
    await tm.set_output_redirect(task_id, "general", "slack", caller=ANA)
    assert (await settled(tm, task_id))["state"] == "delivered"
    [got] = receiver.requests
    assert got.path == "/services/T/B/X"
    text = got.json()["text"]
    assert len(text) <= 40_000 and text.endswith("characters]")


async def test_discord_execute_webhook_cuts_to_2000_and_waits_retry_after(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(Answer(429, {"message": "rate limited", "retry_after": 1.2, "global": False}))
    adapter = DiscordAdapter(receiver.url + "/api/webhooks/1/tok")
    tm = manager(make_manager, {"discord": adapter})
    task_id = await tm.create_task(finish_with("\U0001f600 @everyone " * 400), caller=ANA)
    await tm.set_output_redirect(task_id, "ignored", "discord", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered" and state["attempts"] == 2
    first, second = receiver.requests
    assert second.at - first.at >= 1.15
    assert second.path == "/api/webhooks/1/tok" and second.query == {"wait": ["true"]}
    body = second.json()
    assert body["allowed_mentions"] == {"parse": []}
    content = body["content"]
    assert len(content.encode("utf-16-le")) // 2 <= 2000 and content.endswith("characters]")
    assert "\ud83d" not in content  # never half an emoji


async def test_telegram_send_message_and_its_retry_after(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    receiver.script(
        Answer(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1},
            },
        )
    )
    adapter = TelegramAdapter("42:ABC", api_url=receiver.url)
    tm = manager(make_manager, {"telegram": adapter})
    task_id = await tm.create_task(finish_with("y" * 5000), caller=ANA)
    await tm.set_output_redirect(task_id, "-1001", "telegram", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "delivered"
    first, second = receiver.requests
    assert second.at - first.at >= 0.95
    assert second.path == "/bot42:ABC/sendMessage"
    body = second.json()
    assert body["chat_id"] == "-1001" and len(body["text"]) <= 4096
    assert body["text"].endswith("characters]")


async def test_adapters_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    monkeypatch.setenv("TASKWARD_WEBHOOK_URL", receiver.url + "/env/{channel_id}")
    monkeypatch.setenv("TASKWARD_WEBHOOK_SECRET", SECRET)
    tm = make_manager()
    task_id = await tm.create_task(finish_with("from env"), caller=ANA)
    await tm.set_output_redirect(task_id, "c 1".replace(" ", "-"), "webhook", caller=ANA)
    assert (await settled(tm, task_id))["state"] == "delivered"
    [got] = receiver.requests
    assert got.path == "/env/c-1"
    verify(SECRET, got.headers, got.body)
    monkeypatch.delenv("TASKWARD_WEBHOOK_URL")
    with pytest.raises(ValueError, match="TASKWARD_WEBHOOK_URL"):
        WebhookAdapter.from_env()
    with pytest.raises(ValueError, match="bot token"):
        TelegramAdapter.from_env()
    with pytest.raises(ValueError):
        WebhookAdapter("ftp://x")
    with pytest.raises(ValueError):
        WebhookAdapter("http://x", "not-a-secret")
    assert "secret" not in repr(WebhookAdapter("http://x/token", SECRET)).replace("signed", "")


async def test_an_unconfigured_platform_is_retried_then_fails_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, make_manager: Callable[..., TaskManager]
) -> None:
    monkeypatch.delenv("TASKWARD_DISCORD_WEBHOOK_URL", raising=False)
    tm = make_manager(delivery_timeout=1.2)
    task_id = await tm.create_task(finish_with("x"), caller=ANA)
    await tm.set_output_redirect(task_id, "c", "discord", caller=ANA)
    state = await settled(tm, task_id)
    assert state["state"] == "failed" and state["attempts"] >= 2
    assert (
        "no adapter here: the discord platform needs an execute-webhook URL"
        in (state["last_error"])
    )


# -- the redirect_task tool ---------------------------------------------------------------


async def test_the_redirect_task_tool_delivers_a_background_result_to_a_channel(
    make_manager: Callable[..., TaskManager], receiver: Receiver
) -> None:
    from taskward.tools import ToolContext, ToolRegistry

    tm = manager(make_manager, {"webhook": WebhookAdapter(receiver.url + "/to/{channel_id}")})
    registry = ToolRegistry()

    @registry.tool(timeout=0.05)
    async def slow_report() -> str:
        """A report that takes a while."""
        await asyncio.sleep(0.3)
        return "the report"

    ana = ToolContext(tm, ANA)
    started = json.loads(await registry.call("slow_report", {}, ana))
    assert started["status"] == "running"
    task_id = started["task_id"]
    bo = ToolContext(tm, Caller("bo"))
    arguments = {"task_id": task_id, "channel_id": "C1", "platform": "webhook"}
    assert json.loads(await registry.call("redirect_task", arguments, bo))["status"] == "not_found"
    answer = json.loads(await registry.call("redirect_task", arguments, ana))
    assert answer["redirected_to"] == {"channel_id": "C1", "platform": "webhook"}
    assert answer["status"] == "running"
    bad = dict(arguments, platform="carrier-pigeon")
    assert json.loads(await registry.call("redirect_task", bad, ana))["status"] == "rejected"
    state = await settled(tm, task_id)
    assert state["state"] == "delivered"
    [got] = receiver.requests
    assert got.path == "/to/C1" and got.json()["data"]["result"] == "the report"
    assert not [r for r in receiver.requests if r.path.endswith("carrier-pigeon")]
