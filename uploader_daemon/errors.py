"""Every error the daemon knows how to handle, in one tree.

::

    UploaderError
    ├── AdminError                  an admin can fix it; the process exits with its code
    │   ├── ConfigError             bad configuration (exit 2), every problem listed
    │   ├── StateDirError           state_dir unusable (exit 3)
    │   │   └── CorruptJournalError the journal is damaged and cannot be set aside (exit 5)
    │   ├── JournalUnavailableError the shared (PostgreSQL) journal cannot be reached (exit 6
    │   │                           at start; while running, the work waits for it)
    │   └── AlreadyRunningError     another daemon holds the state_dir lock, or a drop folder
    │                               is marked by another journal (exit 4)
    ├── LoginFailedError            no credential could be obtained; files wait, login is
    │                               retried with the target's backoff
    ├── TokenRequestError           one login/refresh request failed (inside auth/)
    ├── NetworkError                a request got no response (http.py); a step turns it
    │                               into a TransientDeliveryError
    ├── InvalidRequestError         a request that cannot go on the wire (bad URL, header)
    └── DeliveryError               one file's delivery did not complete
        ├── TransientDeliveryError  retry with backoff (408/5xx, ...)
        │   ├── ApiUnavailableError no answer (refused, reset, DNS, TLS, timeout) or 429/502/
        │   │                       503/504: the API is down, not the file at fault; the
        │   │                       target pauses and probes, no attempt is counted
        │   ├── BadResponseError    a 2xx whose body lacks what a later step needs
        │   └── PollDeadlineError   a poll never reached a terminal value in time
        ├── AuthRejectedError       401: the token used is discarded, retried after login
        ├── StaleUploadGrantError   the presigned policy expired: restart from step one
        └── PermanentDeliveryError  other 4xx, or the server reported a failure value:
                                    the file goes to failed_dir at once

``endpoint.ListenError`` (``metrics.listen`` cannot be bound, exit 3) and
``journal.LeaseLostError`` (a shared journal's claim was taken over) live beside the code
that raises them, as do two internal signals, because nothing outside
catches them: ``file_moves.CopyNeededError``/``SidecarError`` and
``templating.TemplateError``.

Errors carry what an admin needs to read at 3 a.m. (the step, the HTTP status, an
excerpt of the body) and never a secret.
"""

from __future__ import annotations

from collections.abc import Sequence


class UploaderError(Exception):
    """Base of every error raised on purpose by uploader-daemon."""


class AdminError(UploaderError):
    """A problem an admin fixes by editing config, permissions or the environment."""

    exit_code = 1


class ConfigError(AdminError):
    """The configuration was refused; ``problems`` holds one sentence per problem."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source} has {count} {noun}:\n" + "\n".join(f"  {p}" for p in problems))


class StateDirError(AdminError):
    """The state directory (journal, token store) cannot be created or used."""

    exit_code = 3


class CorruptJournalError(StateDirError):
    """The journal file is damaged (not a database, or malformed).

    The daemon sets such a journal aside and starts a fresh one when that is safe; when
    it is not (``after_upload: keep``), it stops with this error, which systemd does not
    restart, and the message says how to recover.
    """

    exit_code = 5


class JournalUnavailableError(AdminError):
    """The shared journal's database cannot be reached or refuses the daemon.

    At start the daemon exits with this code and systemd restarts it (the database may be
    starting too); while running, no file is claimed until it answers again.
    """

    exit_code = 6


class AlreadyRunningError(AdminError):
    """Another daemon process already uses this state directory."""

    exit_code = 4


class LoginFailedError(UploaderError):
    """Logging in (or refreshing into a new login) did not produce a usable token.

    ``retry_at`` is the monotonic time (:meth:`Clock.monotonic`) before which no new
    login is attempted.
    """

    def __init__(
        self, message: str, *, retry_at: float, status: int | None = None, rejected: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.status = status
        # The identity service refused the credentials (as opposed to not answering).
        self.rejected = rejected


class TokenRequestError(UploaderError):
    """A login or refresh request failed (the providers' error; the credential turns a
    failed login into :class:`LoginFailedError`).

    ``rejected`` means the server refused the credentials (401/403, a Cognito
    ``NotAuthorizedException``); otherwise the failure is transient (network, 5xx).
    """

    def __init__(self, message: str, *, status: int | None = None, rejected: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.rejected = rejected


class NetworkError(UploaderError):
    """A request got no HTTP response (connection, DNS, TLS, timeout)."""


class InvalidRequestError(UploaderError):
    """A request cannot be sent at all: a malformed URL, a header value that is not ASCII."""


class DeliveryError(UploaderError):
    """A delivery step did not succeed.

    ``step`` names the configured step, ``status`` is the HTTP status when there was a
    response, ``body_excerpt`` is the start of the response body (for the log and the
    ``.error.json`` sidecar).
    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        status: int | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.status = status
        self.body_excerpt = body_excerpt


class TransientDeliveryError(DeliveryError):
    """Worth retrying later; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        status: int | None = None,
        body_excerpt: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, step=step, status=status, body_excerpt=body_excerpt)
        self.retry_after = retry_after


class ApiUnavailableError(TransientDeliveryError):
    """No answer at all, or one that says the service as a whole is unavailable.

    That is an outage (or throttling), not this file's failure: the target pauses and
    probes (:mod:`uploader_daemon.pool.gate`), and the file keeps its attempts.
    """


class BadResponseError(TransientDeliveryError):
    """A successful status whose body is unusable (not JSON, a value missing, wrong type)."""


class PollDeadlineError(TransientDeliveryError):
    """A poll step did not see a terminal value before its deadline."""


class AuthRejectedError(DeliveryError):
    """The API answered 401 to a request that carried the target's credential."""


class StaleUploadGrantError(DeliveryError):
    """The storage refused an expired presigned policy; the delivery starts over."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: the file goes to ``failed_dir`` with a sidecar."""

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        status: int | None = None,
        body_excerpt: str | None = None,
        details: object = None,
    ) -> None:
        super().__init__(message, step=step, status=status, body_excerpt=body_excerpt)
        self.details = details
