"""The generic webhook: a JSON POST signed as Standard Webhooks (see `signing`).

The body is ``{"type": "task.finished", "timestamp": <ISO 8601>, "data": {...}}``
where ``data`` is `RedirectMessage.payload()`: the task id, name, status,
channel, user, item, finish time, the text (cut to ``max_chars``), the result
of a completed task and the error of one that is not.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from .._delivery import DeliveryResult
from .._records import dump_json
from ._http import DEFAULT_TIMEOUT, HttpAdapter
from .signing import secret_key, sign

if TYPE_CHECKING:
    from .._delivery import RedirectMessage

__all__ = ["WebhookAdapter"]


class WebhookAdapter(HttpAdapter):
    """POSTs each delivery to `url` (``{channel_id}`` in it is replaced by the channel id,
    URL-quoted), signed with `secret` when one is given."""

    def __init__(
        self, url: str, secret: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        if not url.startswith(("http://", "https://")):
            raise ValueError("the webhook URL must be an http:// or https:// URL")
        self._url = url
        self._key = None if secret is None else secret_key(secret)

    def __repr__(self) -> str:  # no URL, no secret
        return f"<WebhookAdapter signed={self._key is not None}>"

    @classmethod
    def from_env(cls) -> WebhookAdapter:
        url = os.environ.get("TASKWARD_WEBHOOK_URL")
        if not url:
            raise ValueError("the webhook platform needs TASKWARD_WEBHOOK_URL")
        return cls(url, os.environ.get("TASKWARD_WEBHOOK_SECRET") or None)

    async def deliver(self, message: RedirectMessage) -> DeliveryResult:
        now = time.time()
        body = dump_json(
            {
                "type": "task.finished",
                "timestamp": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
                "data": message.payload(),
            }
        ).encode()
        msg_id = message.idempotency_key
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, int(now), body)
        url = self._url.replace("{channel_id}", quote(message.delivery.channel_id, safe=""))
        response = await self._post(url, content=body, headers=headers)
        if isinstance(response, DeliveryResult):
            return response
        return self.classify(response)
