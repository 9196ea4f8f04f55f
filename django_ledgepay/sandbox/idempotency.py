"""Idempotency keys: the first answer to a POST, replayed to the same request sent again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django_ledgepay.sandbox.api import Answer, APIFailure
from django_ledgepay.sandbox.snapshots import SnapshotError, integer

#: A record's identity: a digest of the API key, and the Idempotency-Key.
RecordId = tuple[str, str]


@dataclass(frozen=True)
class KeyedRequest:
    """A POST sent with an Idempotency-Key: whose, under which key, and a digest of it."""

    record: RecordId
    fingerprint: str


def keyed_request(api_key: str, key: str, method: str, path: str, body: bytes) -> KeyedRequest:
    """The request as its record knows it; a 400 if the key is too short or too long."""
    if not 0 < len(key) <= 255:
        raise APIFailure(400, "Idempotency-Key must be 1 to 255 characters.")
    fingerprint = hashlib.sha256(f"{method} {path} ".encode() + body).hexdigest()
    owner = hashlib.sha256(api_key.encode()).hexdigest()
    return KeyedRequest((owner, key), fingerprint)


class IdempotencyRecords:
    """The first answer to each keyed POST, by a digest of the API key and the key.

    The API key itself is never kept, so a snapshot never holds it. Not locked: its
    owner's lock guards it.
    """

    def __init__(self) -> None:
        self._answers: dict[RecordId, tuple[str, Answer]] = {}
        # Each record's JSON, so that a snapshot encodes only the records made since the
        # one before (a record never changes once made).
        self._encoded: dict[RecordId, str] = {}

    def replay(self, request: KeyedRequest) -> Answer | None:
        """The first answer to ``request``, None if it is new; a 400 if its key was used
        with another request."""
        stored = self._answers.get(request.record)
        if stored is None:
            return None
        if stored[0] != request.fingerprint:
            raise APIFailure(
                400,
                "This Idempotency-Key was used with another request.",
                error_type="idempotency_error",
            )
        return stored[1]

    def keep(self, request: KeyedRequest, answer: Answer) -> None:
        self._answers[request.record] = (request.fingerprint, answer)

    def snapshot(self) -> str:
        """The records as the items of a JSON array (without its brackets)."""
        return ",".join(self._encode(record) for record in self._answers)

    def _encode(self, record: RecordId) -> str:
        encoded = self._encoded.get(record)
        if encoded is None:
            fingerprint, answer = self._answers[record]
            value = [*record, fingerprint, answer.status, answer.body, answer.headers]
            encoded = self._encoded[record] = json.dumps(value, separators=(",", ":"))
        return encoded

    @classmethod
    def restore(cls, records: Iterable[Any]) -> IdempotencyRecords:
        """The records a :meth:`snapshot` held, decoded. A record not of its shape raises
        :class:`SnapshotError`, or the error its unpacking raised."""
        restored = cls()
        for owner, key, fingerprint, status, body, headers in records:
            if not all(isinstance(value, str) for value in (owner, key, fingerprint)):
                raise SnapshotError("an idempotency record is not of strings")
            answer = Answer(integer(status, "an idempotency record's status"), body)
            answer.headers.update(headers)
            restored._answers[(owner, key)] = (fingerprint, answer)
        return restored
