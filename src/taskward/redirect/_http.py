"""What the HTTP adapters share: one httpx client each, and reading an answer."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from .._delivery import DeliveryResult

__all__ = ["DEFAULT_TIMEOUT", "MAX_CONNECTIONS", "HttpAdapter", "retry_after"]

#: Seconds an HTTP request may take (connect, write, read each).
DEFAULT_TIMEOUT = 10.0
#: Connections an adapter keeps to its platform. More is slower, not faster: on a
#: 2-core box httpx posts ~1,100/s over 2 connections, ~740/s over 8, ~145/s over 64
#: (bench/redirect.py's receiver); chat platforms rate-limit far below either.
MAX_CONNECTIONS = 8


def retry_after(response: httpx.Response) -> float | None:
    """The delay a 429 (or 503) asks for: ``Retry-After`` (seconds or an HTTP date), or
    ``retry_after`` in a JSON body (Discord: top level; Telegram: under ``parameters``)."""
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            when = email.utils.parsedate_to_datetime(header) if header else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        for holder in (body, body.get("parameters")):
            if isinstance(holder, dict) and isinstance(holder.get("retry_after"), int | float):
                return max(0.0, float(holder["retry_after"]))
    return None


def _brief(response: httpx.Response) -> str:
    return response.text[:200].replace("\n", " ")


class HttpAdapter:
    """An adapter that POSTs: owns its client, maps transport errors and statuses."""

    limit = 0  # the platform's limit on a message's text (0: none)
    utf16 = False  # whether the platform counts that limit in UTF-16 units

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
                ),
            )
        return self._client

    async def _post(self, url: str, **kwargs: Any) -> httpx.Response | DeliveryResult:
        """The response, or the `DeliveryResult` of a transport failure (the URL,
        which may hold a token, is never part of the error: only its host)."""
        host = httpx.URL(url).host
        try:
            return await self._http().post(url, **kwargs)
        except httpx.TimeoutException as exc:
            return DeliveryResult.retry(f"{type(exc).__name__}: no answer from {host}")
        except httpx.TransportError as exc:
            return DeliveryResult.retry(f"{type(exc).__name__}: could not reach {host}")

    @staticmethod
    def classify(response: httpx.Response) -> DeliveryResult:
        """2xx delivered; 408, 429 and 5xx transient; any other status rejected."""
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult.delivered()
        if status == 429 or status == 408 or status >= 500:
            return DeliveryResult.retry(f"HTTP {status}: {_brief(response)}", retry_after(response))
        return DeliveryResult.rejected(f"HTTP {status}: {_brief(response)}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
