"""Running a file's steps in order, with a journal checkpoint after each one.

Where an interrupted delivery resumes (after a crash or a failed attempt):

- a step whose outcome is unknown (it was sent, no answer recorded) is sent again only
  if that is harmless (polls, downloads, GET/PUT/DELETE requests); otherwise the
  delivery starts over, so nothing is confirmed twice;
- between steps, the next step runs, except a storage POST: its presigned grant is
  short-lived, so the delivery starts over to get a fresh one;
- a step the server definitely refused (401, 408, 425, 429) or that never went out (no
  login) did not take effect: the next attempt sends that step again;
- a storage that says the grant expired restarts the delivery at once (a few times),
  without counting a failed attempt;
- a checkpoint written for another step list (steps added, removed, renamed,
  re-addressed) is not trusted: the delivery starts over. Tuning a step keeps it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence

from uploader_daemon.clock import Clock
from uploader_daemon.config.upload import (
    Step,
    StoragePostStep,
    step_creates,
    step_is_repeatable,
    step_templates,
)
from uploader_daemon.delivery.steps import StepContext, run_step
from uploader_daemon.errors import (
    AuthRejectedError,
    DeliveryError,
    LoginFailedError,
    StaleUploadGrantError,
    TransientDeliveryError,
)
from uploader_daemon.journal import Claim, Journal
from uploader_daemon.logs import get_logger
from uploader_daemon.templating import references_in

log = get_logger(__name__)

MAX_GRANT_RESTARTS = 3
# Statuses that say the request was refused before it did anything.
_REFUSED_STATUSES = frozenset({401, 408, 425, 429})


def resume_point(steps: Sequence[Step], next_step: int, step_in_flight: int | None) -> int:
    """The index of the step a delivery continues with (0: start over)."""
    if step_in_flight is not None:
        # Out of range: the step list changed since the checkpoint; nothing saved fits it.
        if not 0 <= step_in_flight < len(steps):
            return 0
        return step_in_flight if step_is_repeatable(steps[step_in_flight]) else 0
    if 0 < next_step < len(steps) and isinstance(steps[next_step], StoragePostStep):
        return 0
    return min(next_step, len(steps))


def plan_of(steps: Sequence[Step]) -> str:
    """A short fingerprint of what each step is, stored with each checkpoint.

    Only what identifies a step (kind, name, method, address, credential) counts:
    tuning a poll's interval or deadline, or an output folder, keeps checkpoints valid,
    so a restart after such an edit does not send anything twice.
    """
    described = json.dumps(
        [
            [
                step.kind,
                step.name,
                getattr(step, "method", "POST"),
                getattr(step, "path", None),
                step.url,
                step.credential,
            ]
            for step in steps
        ]
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def idempotency_key(base: str, step: Step, restarts: int = 0) -> str:
    """The ``Idempotency-Key`` of one step of one file version.

    Stable across retries, restarts and ``kill -9`` (``base`` is stored in the journal
    with the version), different per step (a server keys its replays per request) and
    new after a stale grant restarted the delivery (the old answer is what expired).
    """
    return f"{base}-{step.name}" + (f"-{restarts}" if restarts else "")


def _not_sent(error: BaseException) -> bool:
    """Whether the failed step certainly had no effect on the server."""
    if isinstance(error, LoginFailedError | AuthRejectedError):
        return True
    return isinstance(error, TransientDeliveryError) and error.status in _REFUSED_STATUSES


def uses_sha256(steps: Sequence[Step]) -> bool:
    """Whether any template needs ``{file.sha256}`` (hashing reads the whole file)."""
    return any(
        ref.startswith("file.sha256")
        for step in steps
        for value in step_templates(step)
        for ref in references_in(value)
    )


class Delivery:
    """A target's step list, run for one file at a time."""

    def __init__(
        self, steps: Sequence[Step], journal: Journal, clock: Clock, *, idempotency_header: str | None = None
    ) -> None:
        self.steps = tuple(steps)
        self._idempotency_header = idempotency_header
        self.plan = plan_of(self.steps)
        self._journal = journal
        self._clock = clock

    def _context(self, context: StepContext, claim: Claim, step: Step, restarts: int) -> StepContext:
        if self._idempotency_header is None or not step_creates(step):
            return context
        key = idempotency_key(claim.record.idempotency_key, step, restarts)
        return dataclasses.replace(context, idempotency=(self._idempotency_header, key))

    async def run(self, claim: Claim, make_context: Callable[[dict[str, object]], StepContext]) -> None:
        """Run the remaining steps of the claimed file; the journal then says ``delivered``.

        ``make_context(values)`` builds the step context from the template values of
        the steps completed so far. Raises from the error tree on failure; the journal
        then knows which step was in flight.
        """
        record = claim.record
        replanned = record.plan is not None and record.plan != self.plan
        # A checkpoint of another step list: its indexes would mean other steps.
        index = 0 if replanned else resume_point(self.steps, record.next_step, record.step_in_flight)
        outputs: dict[str, object] = dict(record.outputs) if index > 0 else {}
        bound = log.bind(target=record.target, file=record.path)
        if index == 0 and (record.next_step > 0 or (record.step_in_flight or 0) > 0):
            # Only worth saying when progress is thrown away; retrying step 0 is a retry.
            reason = (
                "the configured steps changed since the last attempt"
                if replanned
                else "an earlier attempt stopped at a step that must not repeat"
            )
            bound.info("delivery_starting_over", reason=reason)
        elif index > 0:
            bound.info("delivery_resuming", step=self.steps[index].name if index < len(self.steps) else None)
        if index >= len(self.steps):
            await self._journal.delivered(claim, self._clock.now())
            return
        restarts = 0
        while index < len(self.steps):
            step = self.steps[index]
            await self._journal.step_started(claim, index, self.plan, self._clock.now())
            try:
                produced = await run_step(step, self._context(make_context(outputs), claim, step, restarts))
            except StaleUploadGrantError as error:
                restarts += 1
                if restarts > MAX_GRANT_RESTARTS:
                    raise TransientDeliveryError(
                        f"{error.message}; {MAX_GRANT_RESTARTS} fresh grants expired too "
                        "(is the clock right?)",
                        step=error.step,
                        status=error.status,
                        body_excerpt=error.body_excerpt,
                    ) from None
                bound.warning(
                    "upload_grant_expired", step=step.name, action="starting over with a fresh grant"
                )
                outputs = {}
                index = 0
                await self._journal.resume_at(claim, 0, outputs, self._clock.now())
                continue
            except (LoginFailedError, DeliveryError) as error:
                if _not_sent(error):
                    # Refused or never sent: the next attempt may send this step again.
                    await self._journal.resume_at(claim, index, outputs, self._clock.now())
                raise
            outputs[step.name] = produced
            await self._journal.step_finished(
                claim, index, outputs, self._clock.now(), last=index == len(self.steps) - 1
            )
            bound.debug("step_done", step=step.name)
            index += 1
