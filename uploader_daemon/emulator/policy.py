"""S3-style presigned POST policies: issued by flows R and P, checked by the storage endpoint.

Two generations are emulated, as the PROTOCOLS page describes. Both carry a base64
JSON policy document (``expiration`` plus ``conditions``) and a signature over that
base64 text, like S3; the signature here is a plain HMAC with a server secret (SHA-256
hex for v4, SHA-1 base64 for v2) instead of AWS's derived signing key, because what the
daemon must get right is forwarding the fields untouched, not the AWS key schedule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

BUCKET = "emulator-bucket"
ACCESS_KEY_ID = "EMULATORACCESSKEYID"
REGION = "us-east-1"
MIN_OBJECT_SIZE = 1
# S3's limit for a single POST upload.
MAX_OBJECT_SIZE = 5 * 1024**3


class PolicyViolation(Exception):
    """A storage POST broke its policy; carries the S3 status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class IssuedPolicy:
    """A presigned POST handed to a client: the flow that issued it and its fields."""

    flow: str
    key: str
    fields: dict[str, str]
    expires_at: float
    size_range: tuple[int, int]


def format_expiration(moment: float) -> str:
    """Format a wall time the way S3 policies do: ``2024-01-31T12:00:00.000Z``."""
    stamp = datetime.fromtimestamp(moment, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_expiration(text: str) -> float:
    """Parse an ISO-8601 policy expiration into a wall time.

    Raises:
        ValueError: the text is not an ISO-8601 date-time.
    """
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


class PolicyBook:
    """Issues presigned POST policies and checks storage POSTs against them.

    Not thread-safe on its own: the emulator calls it with its state lock held.
    """

    def __init__(self, secret: bytes, generation: str) -> None:
        self._secret = secret
        self._generation = generation
        self._issued: dict[str, IssuedPolicy] = {}

    def issue(self, *, flow: str, key: str, now: float, lifetime: float) -> IssuedPolicy:
        """Create the form fields for uploading ``key`` until ``now + lifetime``."""
        expires_at = now + lifetime
        size_range = (MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
        if self._generation == "v4":
            signed = {
                "x-amz-algorithm": "AWS4-HMAC-SHA256",
                "x-amz-credential": (
                    f"{ACCESS_KEY_ID}/{time.strftime('%Y%m%d', time.gmtime(now))}/{REGION}/s3/aws4_request"
                ),
                "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)),
            }
        else:
            signed = {"acl": "private", "Content-Type": "application/octet-stream"}
        document: dict[str, Any] = {
            "expiration": format_expiration(expires_at),
            "conditions": [
                {"bucket": BUCKET},
                {"key": key},
                *({name: value} for name, value in signed.items()),
                ["content-length-range", *size_range],
            ],
        }
        policy = base64.b64encode(json.dumps(document).encode()).decode("ascii")
        if self._generation == "v4":
            fields = {
                "key": key,
                "Policy": policy,
                "X-Amz-Algorithm": signed["x-amz-algorithm"],
                "X-Amz-Credential": signed["x-amz-credential"],
                "X-Amz-Date": signed["x-amz-date"],
                "X-Amz-Signature": self._sign(policy),
            }
        else:
            fields = {
                "key": key,
                "policy": policy,
                "signature": self._sign(policy),
                "AWSAccessKeyId": ACCESS_KEY_ID,
                "acl": signed["acl"],
                "Content-Type": signed["Content-Type"],
            }
        issued = IssuedPolicy(flow, key, fields, expires_at, size_range)
        self._issued[policy] = issued
        return issued

    def check(self, posted: Mapping[str, str], now: float) -> IssuedPolicy:
        """Check a storage POST's form fields; return the policy they satisfy.

        Field names are compared without case (S3 does), values exactly.

        Raises:
            PolicyViolation: a field is missing or modified, the signature is wrong, or
                the policy has expired; the size range is left to the caller, who only
                knows the size once the file part is read.
        """
        fields = {name.lower(): value for name, value in posted.items()}
        signature_name = "x-amz-signature" if self._generation == "v4" else "signature"
        for required in ("key", "policy", signature_name):
            if required not in fields:
                raise PolicyViolation(
                    400, "InvalidArgument", f"Bucket POST must contain a field named '{required}'."
                )
        policy = fields["policy"]
        if not hmac.compare_digest(self._sign(policy), fields[signature_name]):
            raise PolicyViolation(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.",
            )
        issued = self._issued.get(policy)
        if issued is None:
            raise PolicyViolation(
                403, "AccessDenied", "Invalid according to Policy: Policy was not issued here."
            )
        if now >= _expiration_of(policy):
            raise PolicyViolation(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        for name, value in issued.fields.items():
            if fields.get(name.lower()) != value:
                raise PolicyViolation(
                    403,
                    "AccessDenied",
                    f'Invalid according to Policy: Policy Condition failed: ["eq", "${name}", "{value}"]',
                )
        return issued

    def _sign(self, policy: str) -> str:
        if self._generation == "v4":
            return hmac.new(self._secret, policy.encode(), hashlib.sha256).hexdigest()
        digest = hmac.new(self._secret, policy.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")


def _expiration_of(policy: str) -> float:
    """Read ``expiration`` from a base64 policy document, as S3 does on every POST."""
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
        return parse_expiration(str(document["expiration"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as error:
        raise PolicyViolation(
            400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON or expiration."
        ) from error
