"""AWS Cognito user-pool login with SRP, and ``REFRESH_TOKEN_AUTH`` renewal (flow G).

pycognito does the SRP maths (the password never leaves the machine); boto3 talks to
Cognito. Both are blocking, so calls run in a worker thread. Requests are unsigned:
``InitiateAuth``/``RespondToAuthChallenge`` need no AWS credentials, and not resolving
any keeps boto3 from probing the EC2 metadata service on a plain server.

Installed with the optional extra ``uploader-daemon[cognito]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uploader_daemon.auth.grant import TokenGrant, expiry_for, jwt_claims
from uploader_daemon.clock import Clock
from uploader_daemon.config.auth import CognitoAuth
from uploader_daemon.errors import TokenRequestError

# Cognito's answers for credentials it will not accept: retrying cannot help.
_REJECTIONS = frozenset(
    {
        "NotAuthorizedException",
        "UserNotFoundException",
        "PasswordResetRequiredException",
        "UserNotConfirmedException",
        "InvalidParameterException",
        "ResourceNotFoundException",
    }
)
_DEFAULT_LIFETIME = 3600.0


class CognitoProvider:
    """Tokens from a Cognito user pool."""

    can_refresh = True

    def __init__(self, settings: CognitoAuth, clock: Clock, timeout: float) -> None:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        self._settings = settings
        self._clock = clock
        self._client: Any = boto3.client(
            "cognito-idp",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=Config(
                signature_version=UNSIGNED,
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    async def login(self) -> TokenGrant:
        sent_at = self._clock.now()
        result = await asyncio.to_thread(self._call, self._srp_login)
        return self._grant(result, sent_at)

    async def refresh(self, grant: TokenGrant) -> TokenGrant:
        if not grant.refresh_token:
            raise TokenRequestError("no refresh token held", rejected=True)
        sent_at = self._clock.now()
        parameters = {"REFRESH_TOKEN": grant.refresh_token}
        if self._settings.client_secret is not None:
            username = _username_claim(grant.token) or self._settings.username
            parameters["SECRET_HASH"] = self._secret_hash(username)

        def refresh() -> dict[str, Any]:
            answer: dict[str, Any] = self._client.initiate_auth(
                ClientId=self._settings.client_id, AuthFlow="REFRESH_TOKEN_AUTH", AuthParameters=parameters
            )
            return answer

        result = await asyncio.to_thread(self._call, refresh)
        return self._grant(result, sent_at)

    def _srp_login(self) -> dict[str, Any]:
        from pycognito.aws_srp import AWSSRP

        settings = self._settings
        srp = AWSSRP(
            username=settings.username,
            password=settings.password.value,
            pool_id=settings.user_pool_id,
            client_id=settings.client_id,
            client=self._client,
            client_secret=settings.client_secret.value if settings.client_secret else None,
        )
        answer: dict[str, Any] = srp.authenticate_user()
        return answer

    def _call(self, function: Any) -> dict[str, Any]:
        """Run a blocking Cognito call, turning its exceptions into :class:`TokenRequestError`."""
        from botocore.exceptions import BotoCoreError, ClientError
        from pycognito.exceptions import ForceChangePasswordException, WarrantException

        try:
            result: dict[str, Any] = function()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.response.get("Error", {}).get("Message", "")
            raise TokenRequestError(
                f"Cognito answered {code}: {message}".rstrip(": "),
                status=status,
                rejected=code in _REJECTIONS,
            ) from None
        except ForceChangePasswordException:
            raise TokenRequestError(
                "Cognito requires this user to change the password before logging in; set a "
                "permanent password (aws cognito-idp admin-set-user-password --permanent)",
                rejected=True,
            ) from None
        except WarrantException as error:
            raise TokenRequestError(
                f"Cognito login needs a step the daemon cannot do: {error}", rejected=True
            ) from None
        except BotoCoreError as error:
            raise TokenRequestError(f"Cognito request failed: {error}") from None
        return result

    def _grant(self, result: dict[str, Any], sent_at: float) -> TokenGrant:
        authentication = result.get("AuthenticationResult")
        if not isinstance(authentication, dict):
            challenge = result.get("ChallengeName", "unknown")
            raise TokenRequestError(
                f"Cognito asked for a {challenge} challenge the daemon cannot answer", rejected=True
            )
        key = "AccessToken" if self._settings.token == "access" else "IdToken"
        token = authentication.get(key)
        if not isinstance(token, str) or not token:
            raise TokenRequestError(f"Cognito's answer has no {key}")
        expires_at = expiry_for(token, sent_at, authentication.get("ExpiresIn"), _DEFAULT_LIFETIME)
        refresh_token = authentication.get("RefreshToken")
        return TokenGrant(
            token=token,
            expires_at=expires_at,
            obtained_at=sent_at,
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
        )

    def _secret_hash(self, username: str) -> str:
        from pycognito.aws_srp import AWSSRP

        assert self._settings.client_secret is not None
        secret_hash: str = AWSSRP.get_secret_hash(
            username, self._settings.client_id, self._settings.client_secret.value
        )
        return secret_hash


def _username_claim(token: str) -> str | None:
    # Cognito computes a refresh's SECRET_HASH over the user's internal name, which the
    # access token carries as "username" and the ID token as "cognito:username"; the
    # configured name may be an alias such as an email.
    claims = jwt_claims(token)
    for claim in ("username", "cognito:username"):
        value = claims.get(claim)
        if isinstance(value, str) and value:
            return value
    return None
