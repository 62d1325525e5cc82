"""Credentials: how each target obtains, keeps, renews and presents its authorization.

Kinds (``auth.type``): ``token`` (HTTP login, refresh endpoint or re-login), ``cognito``
(SRP login, refresh token), ``headers`` (static API keys), ``none``.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from uploader_daemon.activity import ApiActivity
from uploader_daemon.auth.base import AuthHeaders, Credential, StaticCredential, Timer
from uploader_daemon.auth.http_token import HttpTokenProvider
from uploader_daemon.auth.managed import ManagedTokenCredential, TokenProvider
from uploader_daemon.auth.store import TokenStore
from uploader_daemon.auth.wire import CredentialAuth, ForeignOriginError
from uploader_daemon.clock import Clock
from uploader_daemon.config.auth import CognitoAuth, HeadersAuth, RenewalSettings, TokenAuth
from uploader_daemon.config.schema import TargetSettings
from uploader_daemon.monitor import QUIET, TargetEvents
from uploader_daemon.redaction import Redactor

__all__ = [
    "AuthHeaders",
    "Credential",
    "CredentialAuth",
    "ForeignOriginError",
    "ManagedTokenCredential",
    "StaticCredential",
    "Timer",
    "build_credential",
]


def build_credential(
    target: TargetSettings,
    *,
    client: httpx.AsyncClient,
    clock: Clock,
    activity: ApiActivity,
    tokens_dir: Path,
    redactor: Redactor,
    timer: Timer | None = None,
    events: TargetEvents = QUIET,
) -> Credential:
    """The credential object for ``target``'s ``auth:`` settings; renewal checks go on ``timer``."""
    auth = target.auth
    if isinstance(auth, HeadersAuth):
        return StaticCredential({name: secret.value for name, secret in auth.headers.items()})
    provider: TokenProvider
    renewal: RenewalSettings
    if isinstance(auth, TokenAuth):
        provider = HttpTokenProvider(auth, target.api.base_url, client, clock, events)
        identity = f"token {target.api.base_url}{auth.login.path} {auth.login.username}"
        renewal = auth.refresh
    elif isinstance(auth, CognitoAuth):
        from uploader_daemon.auth.cognito import CognitoProvider

        provider = CognitoProvider(auth, clock, target.api.timeout)
        identity = f"cognito {auth.user_pool_id} {auth.client_id} {auth.username} {auth.token}"
        renewal = auth.refresh
    else:
        return StaticCredential({})
    return ManagedTokenCredential(
        target=target.name,
        provider=provider,
        store=TokenStore(tokens_dir, target.name, identity),
        clock=clock,
        activity=activity,
        renewal=renewal,
        retry=target.retry,
        header_name=auth.header_name,
        header_template=auth.header,
        expiry_margin=auth.expiry_margin,
        redactor=redactor,
        timer=timer,
        events=events,
    )
