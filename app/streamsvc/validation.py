"""Validation of what clients send: track ids in paths and POST /plays bodies. Pure functions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_ID = 2**63 - 1  # ids are PostgreSQL bigint
MAX_PLAY_BODY = 4096
_ID = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_LISTENER = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


class BadRequest(ValueError):
    """The request is malformed: answer 400 with this one-line message."""


@dataclass(frozen=True)
class Play:
    """A valid POST /plays body."""

    track_id: int
    listener_id: str


def parse_id(text: str) -> int:
    """A track id from a path segment: a positive integer in canonical decimal (no sign, no leading 0)."""
    if not _ID.fullmatch(text) or int(text) > MAX_ID:
        raise BadRequest("track id must be a positive integer")
    return int(text)


def parse_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header of POST /plays: None when absent, BadRequest when malformed."""
    if value is None or value == "":
        return None
    if not _LISTENER.fullmatch(value):
        raise BadRequest("Idempotency-Key must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _reject_constant(name: str) -> None:
    raise BadRequest(f"{name} is not valid JSON")


def parse_play(body: bytes) -> Play:
    """A Play from a JSON body {"track_id": int, "listener_id": str}; BadRequest otherwise."""
    if len(body) > MAX_PLAY_BODY:
        raise BadRequest(f"body is larger than {MAX_PLAY_BODY} bytes")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - {"track_id", "listener_id"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}"[:200])
    track_id = data.get("track_id")
    listener_id = data.get("listener_id")
    # bool is an int in Python; JSON true is not a track id.
    if type(track_id) is not int or not 1 <= track_id <= MAX_ID:
        raise BadRequest("track_id must be a positive integer")
    if type(listener_id) is not str or not _LISTENER.fullmatch(listener_id):
        raise BadRequest("listener_id must be 1-64 characters of A-Z a-z 0-9 _ -")
    return Play(track_id, listener_id)
