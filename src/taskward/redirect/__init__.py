"""Redirect adapters: where a finished task's outcome can be delivered.

`TaskManager.set_output_redirect(task_id, channel_id, platform)` names a
platform; the adapter registered under that name sends the delivery. Built in
(HTTP through httpx: ``pip install 'taskward[redirect]'``), each configured by
environment variables unless you build it yourself and pass it to
``TaskManager(redirect_adapters={"name": adapter})``:

============  =============================================================
Platform      Configuration
============  =============================================================
``webhook``   `WebhookAdapter`: ``TASKWARD_WEBHOOK_URL`` (may contain
              ``{channel_id}``), ``TASKWARD_WEBHOOK_SECRET`` (``whsec_...``;
              requests are signed as Standard Webhooks when set)
``slack``     `SlackAdapter`: ``TASKWARD_SLACK_BOT_TOKEN`` (``chat.postMessage``
              to the channel id) or ``TASKWARD_SLACK_WEBHOOK_URL`` (an incoming
              webhook, bound to its own channel); ``TASKWARD_SLACK_API_URL``
``discord``   `DiscordAdapter`: ``TASKWARD_DISCORD_WEBHOOK_URL`` (an execute-webhook
              URL, may contain ``{channel_id}``)
``telegram``  `TelegramAdapter`: ``TASKWARD_TELEGRAM_BOT_TOKEN``,
              ``TASKWARD_TELEGRAM_API_URL``
============  =============================================================

Secrets (tokens, webhook URLs, signing secrets) are never logged nor written
to records: a delivery error names the host and the failure only.

`register_adapter(name, factory)` adds a platform of your own (any object
with ``async deliver(message) -> DeliveryResult`` and ``async aclose()``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._delivery import DeliveryResult, PlatformAdapter, RedirectMessage

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DeliveryResult",
    "PlatformAdapter",
    "RedirectMessage",
    "create_adapter",
    "register_adapter",
    "registered_platforms",
]

# Built-in platforms: module and class, imported when first used (they need httpx).
_BUILTIN: dict[str, tuple[str, str]] = {
    "webhook": ("taskward.redirect.webhook", "WebhookAdapter"),
    "slack": ("taskward.redirect.platforms", "SlackAdapter"),
    "discord": ("taskward.redirect.platforms", "DiscordAdapter"),
    "telegram": ("taskward.redirect.platforms", "TelegramAdapter"),
}
_FACTORIES: dict[str, Callable[[], PlatformAdapter]] = {}


def register_adapter(platform: str, factory: Callable[[], PlatformAdapter]) -> None:
    """Deliver redirects to `platform` with adapters made by `factory()` (one per manager)."""
    if not isinstance(platform, str):
        raise TypeError(f"platform must be a str, not {type(platform).__name__}")
    if not platform or len(platform) > 64:
        raise ValueError("platform must be a non-empty str of at most 64 characters")
    if not callable(factory):
        raise TypeError("factory must be callable")
    _FACTORIES[platform] = factory


def registered_platforms() -> frozenset[str]:
    """The platform names an adapter can be made for here."""
    return frozenset(_BUILTIN) | frozenset(_FACTORIES)


def create_adapter(platform: str) -> PlatformAdapter:
    """A new adapter for `platform`, configured from the environment.

    Raises LookupError for an unknown platform, ValueError when its configuration
    is missing, ImportError (naming the extra) without httpx.
    """
    factory = _FACTORIES.get(platform)
    if factory is not None:
        return factory()
    if platform not in _BUILTIN:
        raise LookupError(f"no redirect adapter for platform {platform!r}")
    module_name, class_name = _BUILTIN[platform]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name != "httpx":
            raise
        raise ImportError("redirect adapters need httpx: pip install 'taskward[redirect]'") from exc
    adapter: PlatformAdapter = getattr(module, class_name).from_env()
    return adapter
