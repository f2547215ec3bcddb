"""The uplink's side toward the broker: what a connected MQTT session offers, and when to retry.

What lives here: `Publisher` and `PublisherFactory`, the protocols the app's MQTT client fits,
and `ReconnectPolicy`: full-jitter exponential backoff between connect attempts (so thousands
of hubs do not reconnect in the same second after a broker restart), the long pause after a
stable refusal (bad login, untrusted certificate: retrying the same settings won't help), and
the log line that says what to check for each kind of failure. A certificate outside its
validity period is stable only if the hub's clock is right: while the clock is not synchronised
(a Raspberry Pi without a real-time clock, just booted) it is retried at the normal backoff, so
the hub connects soon after NTP sets the clock. What may not: any concrete transport or store,
or the lease-publish-ack loop (that is `gateway.hub.uplink`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from gateway.hub.clock import HubClock, clock_state

_LOGGER = logging.getLogger(__name__)


class Publisher(Protocol):
    """One connected MQTT session, as the uplink uses it (`MqttClient` fits).

    Errors raised by `publish` futures or by the factory may carry a `kind` attribute: "auth"
    and "tls" are retried only after a long pause, since retrying the same settings won't help;
    "tls-clock" (a certificate expired or not yet valid by the hub's clock) likewise, but only
    while the hub's clock is synchronised.
    """

    @property
    def is_connected(self) -> bool: ...

    @property
    def receive_maximum(self) -> int:
        """The broker's limit on unacknowledged QoS 1 publishes (MQTT 5 Receive Maximum)."""
        ...

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Resolves on PUBACK; fails if the connection drops first."""
        ...

    async def wait_disconnected(self) -> None: ...

    async def disconnect(self, drain_timeout: float = 5.0, *, with_will: bool = False) -> None: ...

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (the broker then publishes the will)."""
        ...


PublisherFactory = Callable[[str, bytes], Awaitable[Publisher]]
"""`factory(will_topic, will_payload)` connects (will retained, QoS 1) and returns the session."""


class ReconnectPolicy:
    """How long the uplink waits before its next connect attempt, and what it logs about why.

    `clock` reports the hub clock's sync state (`gateway.hub.clock.clock_state`; tests pass
    their own)."""

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        auth_pause: float,
        clock: Callable[[], HubClock] = clock_state,
    ) -> None:
        self._jitter = wait_random_exponential(multiplier=initial, max=maximum)
        self._auth_pause = auth_pause
        self._clock = clock
        self._retry_owner = AsyncRetrying()  # only to build RetryCallState for the wait policy

    def delay(self, failures: int, error: BaseException | None) -> float:
        """Seconds to wait after `failures` consecutive failed connects or fruitless sessions."""
        if self._stable(error):
            return self._auth_pause
        state = RetryCallState(self._retry_owner, None, (), {})
        state.attempt_number = failures
        return float(self._jitter(state))

    def _stable(self, error: BaseException | None) -> bool:
        """Will the same settings fail the same way for a while? Only then the long pause."""
        kind = getattr(error, "kind", None)
        if kind == "tls-clock":
            # "Not yet valid" at boot on a hub whose clock NTP has not set yet, or "expired"
            # by a clock that is far off: both clear up when the clock is synchronised.
            return self._clock() == "synced"
        return kind in ("auth", "tls")

    def report(self, error: BaseException, delay: float) -> str:
        """Log why a connect failed and what to check; returns the error's text for the stats."""
        text = str(error) or type(error).__name__
        kind = getattr(error, "kind", None)
        if kind == "auth":
            _LOGGER.error(
                "mqtt login refused: %s; check mqtt username/password_file. Next try in %.0f s",
                text,
                delay,
            )
        elif kind == "tls" or (kind == "tls-clock" and self._stable(error)):
            _LOGGER.error(
                "mqtt TLS failed: %s; check mqtt ca_file/cert_file/key_file and the clock."
                " Next try in %.0f s",
                text,
                delay,
            )
        elif kind == "tls-clock":
            _LOGGER.warning(
                "mqtt TLS: %s; this hub's clock is not synchronised yet, so it retries in %.1f s"
                " and connects once NTP has set the clock (check NTP if this persists)",
                text,
                delay,
            )
        else:
            _LOGGER.warning(
                "mqtt connect failed (%s); retrying in %.1f s. Readings stay in the outbox;"
                " check the broker address and network if this persists",
                text,
                delay,
            )
        return text
