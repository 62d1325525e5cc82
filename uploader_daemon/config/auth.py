"""The ``auth:`` section of a target: how the daemon obtains and presents its credential."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from uploader_daemon.config.types import (
    ApiPath,
    Duration,
    HttpUrl,
    Model,
    PositiveDuration,
    SecretValue,
)


class RenewalSettings(Model):
    """When a held token is renewed: only near expiry, and only while the API is in use."""

    check_every: PositiveDuration = Field(
        default=1800.0, description="How often the scheduler checks the token."
    )
    before_expiry: Duration = Field(default=300.0, description="Renew when less than this is left.")
    active_within: PositiveDuration = Field(
        default=1800.0, description="...and only if an upload happened this recently or files are waiting."
    )


class RefreshSettings(RenewalSettings):
    """Renewal through a refresh endpoint; with no ``path`` the daemon logs in again."""

    path: ApiPath | None = Field(default=None, description="Refresh endpoint, e.g. /auth/tokenRefresh.")
    method: Literal["GET", "POST"] = "GET"
    token_field: str | None = Field(default=None, description="Defaults to login.token_field.")
    expires_in_field: str | None = Field(default=None, description="Defaults to login.expires_in_field.")


class LoginSettings(Model):
    """The password login: a JSON body with the username and password."""

    path: ApiPath = "/auth/login"
    method: Literal["POST", "PUT"] = "POST"
    username: str = Field(min_length=1)
    password: SecretValue
    username_field: str = "username"
    password_field: str = "password"
    token_field: str = Field(default="access_token", description="Dotted path of the token in the response.")
    expires_in_field: str | None = Field(
        default="expires_in", description="Dotted path of the lifetime in seconds; else JWT exp."
    )


def _header_template(template: str) -> str:
    if "{token}" not in template:
        raise ValueError(f"{template!r} must contain {{token}}, e.g. 'Bearer {{token}}'")
    return template


HeaderTemplate = Annotated[str, AfterValidator(_header_template)]


class TokenAuth(Model):
    """``type: token``: password login, renewal through a refresh endpoint or a new login."""

    type: Literal["token"]
    login: LoginSettings
    refresh: RefreshSettings = RefreshSettings()
    header: HeaderTemplate = "Bearer {token}"
    header_name: str = "Authorization"
    default_lifetime: PositiveDuration = Field(
        default=3600.0, description="Lifetime when the response has neither expires_in nor a JWT exp."
    )
    expiry_margin: Duration = Field(
        default=10.0, description="A token with less than this left counts as expired (clock skew)."
    )


class CognitoAuth(Model):
    """``type: cognito``: AWS Cognito SRP login, ``REFRESH_TOKEN_AUTH`` renewal."""

    type: Literal["cognito"]
    region: str = Field(min_length=1)
    user_pool_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretValue | None = None
    username: str = Field(min_length=1)
    password: SecretValue
    endpoint_url: HttpUrl | None = Field(default=None, description="Only for tests or VPC endpoints.")
    token: Literal["access", "id"] = "access"
    refresh: RenewalSettings = RenewalSettings()
    header: HeaderTemplate = "Bearer {token}"
    header_name: str = "Authorization"
    expiry_margin: Duration = 10.0

    @model_validator(mode="after")
    def _extra_installed(self) -> CognitoAuth:
        if importlib.util.find_spec("pycognito") is None or importlib.util.find_spec("boto3") is None:
            raise ValueError(
                "type cognito needs the optional extra: pip install 'uploader-daemon[cognito]' "
                "(pycognito and boto3)"
            )
        return self

    @field_validator("user_pool_id")
    @classmethod
    def _pool_id_has_region(cls, pool_id: str) -> str:
        if "_" not in pool_id:
            raise ValueError(f"{pool_id!r} is not a user pool id; it looks like eu-west-1_AbCdEf123")
        return pool_id


class HeadersAuth(Model):
    """``type: headers``: static header values (API keys), each from a secret source."""

    type: Literal["headers"]
    headers: dict[str, SecretValue] = Field(min_length=1)


class NoAuth(Model):
    """``type: none``: the API needs no credential."""

    type: Literal["none"]


AuthSettings = Annotated[TokenAuth | CognitoAuth | HeadersAuth | NoAuth, Field(discriminator="type")]
