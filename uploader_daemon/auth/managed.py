"""The token lifecycle shared by every kind that logs in (HTTP token, JWT, Cognito).

Rules, whatever the provider:

- Before every request the token is checked; a token known to be expired (or within
  ``expiry_margin`` of it) is never sent: the daemon logs in first.
- Only one login or refresh runs at a time (single-flight); concurrent uploads wait for
  it and then use its result.
- The scheduled check renews only when less than ``before_expiry`` is left **and** the
  API was used within ``active_within`` (or files are waiting); an idle daemon lets the
  token lapse. A refresh refused with 401/403 falls back to one password login; a
  network error or 5xx keeps the current token until the next check.
- A failed login is logged (never the password) and retried with the target's backoff;
  until then :class:`LoginFailedError` tells callers when to come back.
- A 401 discards exactly the token that was refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Protocol

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import AuthHeaders, Timer
from uploader_daemon.auth.grant import TokenGrant
from uploader_daemon.auth.store import TokenStore
from uploader_daemon.backoff import backoff_delay
from uploader_daemon.clock import Clock, iso_utc
from uploader_daemon.config.auth import RenewalSettings
from uploader_daemon.config.schema import RetrySettings
from uploader_daemon.errors import LoginFailedError, TokenRequestError
from uploader_daemon.logs import get_logger
from uploader_daemon.monitor import QUIET, Outcome, TargetEvents
from uploader_daemon.redaction import Redactor

log = get_logger(__name__)


class TokenProvider(Protocol):
    """Talks to the identity service; knows nothing of timing or concurrency."""

    @property
    def can_refresh(self) -> bool:
        """Whether :meth:`refresh` exists (else renewal is a new login)."""

    async def login(self) -> TokenGrant:
        """Log in with the password. Raises :class:`TokenRequestError`."""

    async def refresh(self, grant: TokenGrant) -> TokenGrant:
        """Exchange a valid grant for a new one. Raises :class:`TokenRequestError`."""


class ManagedTokenCredential:
    """A provider's tokens, kept valid by the rules in this module's docstring."""

    def __init__(
        self,
        *,
        target: str,
        provider: TokenProvider,
        store: TokenStore,
        clock: Clock,
        activity: ApiActivity,
        renewal: RenewalSettings,
        retry: RetrySettings,
        header_name: str,
        header_template: str,
        expiry_margin: float,
        redactor: Redactor,
        timer: Timer | None = None,
        events: TargetEvents = QUIET,
    ) -> None:
        self._target = target
        self._provider = provider
        self._store = store
        self._clock = clock
        self._activity = activity
        self._renewal = renewal
        self._retry = retry
        self._header_name = header_name
        self._header_template = header_template
        self._margin = expiry_margin
        self._redactor = redactor
        self._timer = timer
        self._events = events
        self._last_login_error: LoginFailedError | None = None
        # The last tokens the API refused: never taken up again from the store.
        self._refused: collections.deque[str] = collections.deque(maxlen=4)
        self._grant: TokenGrant | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._login_failures = 0
        self._login_retry_at = 0.0
        self._warned_short_lifetime = False
        self._log = log.bind(target=target)

    @property
    def check_every(self) -> float:
        return self._renewal.check_every

    @property
    def expires_at(self) -> float | None:
        return self._grant.expires_at if self._grant else None

    def start(self) -> None:
        """Pick up a saved token; check every ``check_every``, and once ahead of each expiry."""
        self.restore()
        if self._timer is not None:
            self._timer.every(f"{self._target}:token-check", self.check_every, self.renew_if_due)

    def restore(self) -> bool:
        """Take up a still-valid token from the store; says whether there was one.

        At start (a restart inside the token's lifetime needs no login), and before each
        login: another process with this credential (``uploader-daemon upload``) may have
        logged in since, and one login is better than two.
        """
        grant = self._store.load()
        if grant is None or not self._usable(grant) or grant.token in self._refused:
            return False
        self._redactor.add_token(grant.token, self._target)
        if grant.refresh_token:
            self._redactor.add_token(grant.refresh_token, f"{self._target}/refresh")
        self._grant = grant
        self._generation += 1
        self._log.info("token_restored", expires_at=iso_utc(grant.expires_at))
        self._announce(grant)
        return True

    async def headers(self) -> AuthHeaders:
        grant = self._grant
        if grant is None or not self._usable(grant):
            async with self._lock:
                grant = self._grant
                if grant is None or not self._usable(grant):
                    if self.restore():  # another process logged in meanwhile
                        assert self._grant is not None
                        return self._headers_for(self._grant)
                    grant = await self._login(reason="no valid token" if grant is None else "token expired")
        return self._headers_for(grant)

    def rejected(self, used: AuthHeaders) -> None:
        if self._grant is not None and used.generation == self._generation:
            self._refused.append(self._grant.token)
            self._grant = None
            self._store.clear()
            self._log.warning("token_discarded", reason="the API answered 401")

    async def renew_if_due(self) -> None:
        try:
            await self._renew_if_due()
        except Exception as error:  # the scheduled job must never die
            self._log.error("token_check_failed", error=str(error), error_type=type(error).__name__)
            self._log.debug("token_check_traceback", exc_info=True)

    async def _renew_if_due(self) -> None:
        grant = self._grant
        if grant is None:
            return
        remaining = grant.expires_at - self._clock.now()
        if not self._due(grant):
            self._log.debug("token_renewal_not_due", expires_in=round(remaining))
            return
        if not self._activity.is_active(self._renewal.active_within):
            self._log.info("token_renewal_skipped", reason="idle", expires_in=round(remaining))
            return
        async with self._lock:
            if self._grant is not grant:
                return  # renewed (or discarded) while we waited for the lock
            if self._provider.can_refresh and self._usable(grant):
                await self._refresh(grant)
            else:
                # Refreshing would send an expired token: log in instead.
                await self._login_quietly(reason="token expiring, no refresh possible")

    async def _refresh(self, grant: TokenGrant) -> None:
        try:
            new_grant = await self._provider.refresh(grant)
        except TokenRequestError as error:
            self._events.refresh_finished(Outcome.REJECTED if error.rejected else Outcome.FAILED)
            if error.rejected:
                self._log.warning("token_refresh_rejected", status=error.status, error=str(error))
                await self._login_quietly(reason="refresh rejected")
            else:
                self._log.warning(
                    "token_refresh_failed",
                    status=error.status,
                    error=str(error),
                    action="keeping the current token; trying again at the next check",
                )
            return
        self._events.refresh_finished(Outcome.SUCCESS)
        self._accept(new_grant, event="token_refreshed")

    async def _login_quietly(self, reason: str) -> None:
        # A failure is already logged; uploads will try again after the backoff.
        with contextlib.suppress(LoginFailedError):
            await self._login(reason=reason)

    async def _login(self, reason: str) -> TokenGrant:
        last = self._last_login_error
        if last is not None and self._clock.monotonic() < self._login_retry_at:
            raise LoginFailedError(
                f"{last} (the login is backing off)",
                retry_at=self._login_retry_at,
                status=last.status,
                rejected=last.rejected,
            )
        self._log.info("login_started", reason=reason)
        try:
            grant = self._fresh(await self._provider.login())
        except TokenRequestError as error:
            self._events.login_finished(Outcome.REJECTED if error.rejected else Outcome.FAILED)
            self._login_failures += 1
            delay = backoff_delay(self._login_failures, self._retry.backoff, self._retry.max_backoff)
            self._login_retry_at = self._clock.monotonic() + delay
            if error.rejected or self._login_failures == 1:
                self._log.error(
                    "login_failed",
                    status=error.status,
                    error=str(error),
                    failures=self._login_failures,
                    retry_in=round(delay, 1),
                    hint="check the username and password" if error.rejected else None,
                )
            else:
                # An API that does not answer is logged once, as an outage, by the pool.
                self._log.info(
                    "login_still_failing",
                    error=str(error),
                    failures=self._login_failures,
                    retry_in=round(delay, 1),
                )
            failure = LoginFailedError(
                str(error), retry_at=self._login_retry_at, status=error.status, rejected=error.rejected
            )
            self._last_login_error = failure
            raise failure from None
        self._events.login_finished(Outcome.SUCCESS)
        self._login_failures = 0
        self._login_retry_at = 0.0
        self._last_login_error = None
        self._accept(grant, event="logged_in")
        return grant

    def _fresh(self, grant: TokenGrant) -> TokenGrant:
        """``grant`` if it can still be used; raises :class:`TokenRequestError` if not."""
        # A token that is expired on arrival (a JWT ``exp`` behind this host's clock) must
        # not be handed out, and logging in again at once would hammer the API: it counts
        # as a failed login, so the backoff applies.
        if not self._usable(grant):
            self._redactor.add_token(grant.token, self._target)
            raise TokenRequestError(
                f"the login answered with a token that expired at {iso_utc(grant.expires_at)}, before it "
                "could be used; check that this host's clock and the API's agree"
            )
        return grant

    def _accept(self, grant: TokenGrant, event: str) -> None:
        # Register before anything could log it; the previous few stay registered
        # because a late error message may still quote them.
        self._redactor.add_token(grant.token, self._target)
        if grant.refresh_token:
            self._redactor.add_token(grant.refresh_token, f"{self._target}/refresh")
        elif self._grant is not None and self._grant.refresh_token:
            # Cognito's refresh answer carries no new refresh token: keep the old one.
            grant = TokenGrant(grant.token, grant.expires_at, grant.obtained_at, self._grant.refresh_token)
        self._grant = grant
        self._generation += 1
        self._store.save(grant)
        self._log.info(
            event, expires_at=iso_utc(grant.expires_at), lifetime=round(grant.expires_at - grant.obtained_at)
        )
        self._announce(grant)

    def _announce(self, grant: TokenGrant) -> None:
        lifetime = grant.expires_at - grant.obtained_at
        if lifetime <= self._renewal.before_expiry and not self._warned_short_lifetime:
            self._warned_short_lifetime = True
            self._log.warning(
                "token_lifetime_shorter_than_before_expiry",
                lifetime=round(lifetime),
                before_expiry=self._renewal.before_expiry,
                hint="the token is renewed at half its lifetime; lower auth.refresh.before_expiry",
            )
        if self._timer is not None:
            # A fixed interval alone could wake up just after the token died.
            due = renewal_time(grant, self._renewal.before_expiry)
            self._timer.at(f"{self._target}:token-due", due, self.renew_if_due)

    def _due(self, grant: TokenGrant) -> bool:
        return self._clock.now() >= renewal_time(grant, self._renewal.before_expiry)

    def _usable(self, grant: TokenGrant) -> bool:
        # The margin never eats more than a tenth of a short-lived token's lifetime.
        margin = min(self._margin, (grant.expires_at - grant.obtained_at) / 10)
        return self._clock.now() < grant.expires_at - margin

    def _headers_for(self, grant: TokenGrant) -> AuthHeaders:
        value = self._header_template.replace("{token}", grant.token)
        return AuthHeaders({self._header_name: value}, self._generation)


def renewal_time(grant: TokenGrant, before_expiry: float) -> float:
    """When a token is due for renewal: ``before_expiry`` ahead of its expiry.

    Never earlier than half its lifetime: with ``before_expiry`` longer than a token
    lives, every new token would be due the moment it arrived, and renew in a loop.
    """
    lifetime = grant.expires_at - grant.obtained_at
    return max(grant.expires_at - before_expiry, grant.obtained_at + lifetime / 2)
