"""Chat platforms: Slack, Discord and Telegram.

Each cuts the text to its platform's limit (and the redirect's ``max_chars``),
between characters, with a visible marker (see `taskward._truncate`): one
delivery is one message, never split, so a retry can never leave half a
message behind.

- Slack: ``chat.postMessage`` with a bot token (to the channel id), or an
  incoming webhook URL (its own channel); text at most 40,000 characters.
- Discord: an execute-webhook URL, ``?wait=true`` so errors come back; content
  at most 2,000 characters (counted in UTF-16 units, as Discord does); mentions
  in the text never ping anyone.
- Telegram: Bot API ``sendMessage`` to the chat id; at most 4,096 characters
  (UTF-16 units).

Slack answers 200 with ``{"ok": false, "error": ...}`` for many failures, and
Telegram ``{"ok": false, "description": ...}``: both are read. A 429 waits the
``Retry-After`` header or the body's ``retry_after``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import quote

from .._delivery import DeliveryResult
from ._http import DEFAULT_TIMEOUT, HttpAdapter

if TYPE_CHECKING:
    import httpx

    from .._delivery import RedirectMessage

__all__ = ["DiscordAdapter", "SlackAdapter", "TelegramAdapter"]

SLACK_API = "https://slack.com/api"
TELEGRAM_API = "https://api.telegram.org"


def _ok_field(response: httpx.Response, failure_key: str) -> DeliveryResult:
    """A 2xx whose JSON body says ``"ok": false`` is a rejection (Slack, Telegram)."""
    try:
        body = response.json()
    except ValueError:
        return DeliveryResult.delivered()  # an incoming webhook answers "ok" as text
    if isinstance(body, dict) and body.get("ok") is False:
        return DeliveryResult.rejected(f"refused: {str(body.get(failure_key, ''))[:200]}")
    return DeliveryResult.delivered()


class SlackAdapter(HttpAdapter):
    """Slack, by bot token (``chat.postMessage``) or by incoming webhook URL."""

    limit = 40_000

    def __init__(
        self,
        *,
        bot_token: str | None = None,
        webhook_url: str | None = None,
        api_url: str = SLACK_API,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(timeout=timeout)
        if not bot_token and not webhook_url:
            raise ValueError("the slack platform needs a bot token or an incoming webhook URL")
        self._token = bot_token
        self._webhook = webhook_url
        self._api = api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"<SlackAdapter {'bot' if self._token else 'webhook'}>"

    @classmethod
    def from_env(cls) -> SlackAdapter:
        return cls(
            bot_token=os.environ.get("TASKWARD_SLACK_BOT_TOKEN") or None,
            webhook_url=os.environ.get("TASKWARD_SLACK_WEBHOOK_URL") or None,
            api_url=os.environ.get("TASKWARD_SLACK_API_URL") or SLACK_API,
        )

    async def deliver(self, message: RedirectMessage) -> DeliveryResult:
        text = message.text_within(self.limit)
        headers = {"idempotency-key": message.idempotency_key}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
            body = {"channel": message.delivery.channel_id, "text": text}
            response = await self._post(f"{self._api}/chat.postMessage", json=body, headers=headers)
        else:
            response = await self._post(self._webhook or "", json={"text": text}, headers=headers)
        if isinstance(response, DeliveryResult):
            return response
        result = self.classify(response)
        return _ok_field(response, "error") if result.ok else result


class DiscordAdapter(HttpAdapter):
    """Discord, by execute-webhook URL (``{channel_id}`` in it is replaced)."""

    limit = 2_000
    utf16 = True

    def __init__(self, webhook_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        if not webhook_url:
            raise ValueError("the discord platform needs an execute-webhook URL")
        self._url = webhook_url

    def __repr__(self) -> str:
        return "<DiscordAdapter>"

    @classmethod
    def from_env(cls) -> DiscordAdapter:
        return cls(os.environ.get("TASKWARD_DISCORD_WEBHOOK_URL") or "")

    async def deliver(self, message: RedirectMessage) -> DeliveryResult:
        url = self._url.replace("{channel_id}", quote(message.delivery.channel_id, safe=""))
        body = {
            "content": message.text_within(self.limit, utf16=True),
            "allowed_mentions": {"parse": []},
        }
        response = await self._post(
            url,
            json=body,
            params={"wait": "true"},
            headers={"idempotency-key": message.idempotency_key},
        )
        if isinstance(response, DeliveryResult):
            return response
        return self.classify(response)


class TelegramAdapter(HttpAdapter):
    """Telegram, by bot token (``sendMessage`` to the chat id)."""

    limit = 4_096
    utf16 = True

    def __init__(
        self, bot_token: str, *, api_url: str = TELEGRAM_API, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        if not bot_token:
            raise ValueError("the telegram platform needs a bot token")
        self._token = bot_token
        self._api = api_url.rstrip("/")

    def __repr__(self) -> str:
        return "<TelegramAdapter>"

    @classmethod
    def from_env(cls) -> TelegramAdapter:
        return cls(
            os.environ.get("TASKWARD_TELEGRAM_BOT_TOKEN") or "",
            api_url=os.environ.get("TASKWARD_TELEGRAM_API_URL") or TELEGRAM_API,
        )

    async def deliver(self, message: RedirectMessage) -> DeliveryResult:
        body = {
            "chat_id": message.delivery.channel_id,
            "text": message.text_within(self.limit, utf16=True),
        }
        response = await self._post(f"{self._api}/bot{self._token}/sendMessage", json=body)
        if isinstance(response, DeliveryResult):
            return response
        result = self.classify(response)
        return _ok_field(response, "description") if result.ok else result
