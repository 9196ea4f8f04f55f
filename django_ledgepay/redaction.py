"""Redaction of the API key: no message, log line or stored error shows any piece of it."""

from __future__ import annotations

from typing import Final

from django_ledgepay.conf import conf

#: The shortest run of the API key's characters :func:`redact` hides wherever it appears.
REDACT_MIN_CHARS: Final = 8
#: What :func:`redact` puts in place of a piece of the key.
REDACTED: Final = "[redacted]"


def shows_key(failure: BaseException, api_key: str) -> bool:
    """Whether a piece of the key (see :func:`redact`) is in the text of ``failure`` or of
    an exception in its chain."""
    seen: set[int] = set()
    current: BaseException | None = failure
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (str(current), repr(current)):
            if redact(text, api_key) != text:
                return True
        cause = current.__cause__
        current = cause if cause or current.__suppress_context__ else current.__context__
    return False


def redact(text: str, api_key: str | None = None) -> str:
    """``text`` with every piece of the API key it holds replaced by ``[redacted]``.

    A piece is any run of :data:`REDACT_MIN_CHARS` or more consecutive characters of the
    key (the whole key, when it is shorter), so an answer echoing the key's start, end or
    middle shows none of it. Overlapping or adjacent pieces are replaced as one.
    ``api_key`` defaults to ``LEDGEPAY_API_KEY``.
    """
    api_key = conf.LEDGEPAY_API_KEY if api_key is None else api_key
    if not api_key or not text:
        return text
    size = min(REDACT_MIN_CHARS, len(api_key))
    pieces = {api_key[start : start + size] for start in range(len(api_key) - size + 1)}
    hidden = [False] * len(text)
    found = False
    for start in range(len(text) - size + 1):
        if text[start : start + size] in pieces:
            hidden[start : start + size] = [True] * size
            found = True
    if not found:
        return text
    parts: list[str] = []
    for position, character in enumerate(text):
        if not hidden[position]:
            parts.append(character)
        elif position == 0 or not hidden[position - 1]:
            parts.append(REDACTED)
    return "".join(parts)
