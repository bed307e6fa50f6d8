"""Configuration from environment variables only (the env file is rendered by Ansible).

STREAM_DATABASE_URL  postgresql://user:password@host:port/db (required); with replicas
                     postgresql://user:password@primary:port,replica:port/db?target_session_attrs=read-write
                     (libpq connects to whichever host accepts writes: a promoted replica after a failover)
STREAM_REDIS_URL     redis://user:password@host:port/0 (required)
STREAM_MEDIA_DIR     directory holding the audio files (required by the service; default ./media)
STREAM_RELEASE_ID    release id reported by /healthz; when unset, read from the release's
                     manifest.json: two levels above this package (releases/<id>/manifest.json
                     beside releases/<id>/app/streamsvc), or beside the venv running it
                     (releases/<id>/venv), else "unknown"
STREAM_CACHE_TTL     seconds a catalogue entry stays in Redis (default 60; 0 disables the cache)
STREAM_AUDIO_ACCEL   an internal nginx location (like /_media/) that serves STREAM_MEDIA_DIR: the service
                     checks an audio request, then answers with X-Accel-Redirect and nginx delivers the
                     bytes (sendfile, ranges); empty (the default) sends the file through the service
STREAM_WRITE_RETRY_SECONDS  how long POST /plays retries a write after a lost database connection before
                     answering 503 (default 15: a failover's window; 0 disables; at most 25, below
                     gunicorn's 30 s worker timeout)

Passwords never leave this module in clear: `redact()` hides them in URLs, `Config.scrub()` in
any text about to be logged or printed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("streamsvc")

MANIFEST = Path(__file__).resolve().parent.parent.parent / "manifest.json"
UNKNOWN_RELEASE = "unknown"
_ACCEL = re.compile(r"/(?:[A-Za-z0-9_-]+/)+", re.ASCII)
_RELEASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)


class ConfigError(Exception):
    """The environment does not describe a usable service; the message is one line, no secret."""


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


@dataclass(frozen=True)
class Config:
    """Everything the service reads from its environment."""

    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    media_dir: Path
    release: str
    cache_ttl: int = 60
    write_retry_seconds: float = 15.0
    audio_accel: str = ""

    def __repr__(self) -> str:
        return (f"Config(database_url={redact(self.database_url)!r}, redis_url={redact(self.redis_url)!r}, "
                f"media_dir={str(self.media_dir)!r}, release={self.release!r}, cache_ttl={self.cache_ttl}, "
                f"write_retry_seconds={self.write_retry_seconds}, audio_accel={self.audio_accel!r})")

    def secrets(self) -> list[str]:
        """The passwords in the URLs (raw and percent-decoded), longest first.

        Passwords shorter than 4 characters are left out: scrubbing them would garble every message
        (and they protect nothing)."""
        found: set[str] = set()
        for url in (self.database_url, self.redis_url):
            password = _password(url)
            if password:
                found.add(password)
                raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
                if raw:
                    found.add(raw)
        return sorted((f for f in found if len(f) >= 4), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every configured password replaced by ***."""
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text


def _manifests() -> list[Path]:
    found = [MANIFEST]
    if sys.prefix != sys.base_prefix:  # in a venv: releases/<id>/venv -> releases/<id>/manifest.json
        found.append(Path(sys.prefix).resolve().parent / "manifest.json")
    return found


def read_release(manifest: Path | None = None) -> str:
    """The release id in the release's manifest.json (see the module doc), or "unknown"."""
    if manifest is None:
        existing = [path for path in _manifests() if path.is_file()]
        if not existing:
            return UNKNOWN_RELEASE
        manifest = existing[0]
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UNKNOWN_RELEASE
    except (OSError, ValueError) as exc:
        log.warning("cannot read release id from %s: %s", manifest, exc)
        return UNKNOWN_RELEASE
    release = data.get("release_id") if isinstance(data, dict) else None
    if isinstance(release, str) and _RELEASE_ID.fullmatch(release):
        return release
    log.warning("no valid release_id in %s", manifest)
    return UNKNOWN_RELEASE


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str:
    url = env.get(name, "").strip()
    if not url:
        raise ConfigError(f"{name} is not set")
    try:
        parts = urlsplit(url)
        # libpq takes several hosts (host1:port1,host2:port2: the primary and its replicas); check each port.
        hostinfo = parts.netloc.rpartition("@")[2]
        for one in hostinfo.split(",") if parts.scheme.startswith("postgres") else [hostinfo]:
            urlsplit(f"//{one}").port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")
    return url


def database_url(env: Mapping[str, str]) -> str:
    """STREAM_DATABASE_URL alone (what migrate and seed need); ConfigError when missing or wrong."""
    return _url(env, "STREAM_DATABASE_URL", ("postgresql", "postgres"))


def from_env(env: Mapping[str, str] | None = None, manifest: Path | None = None) -> Config:
    """Read the configuration; ConfigError (one line, no secret) when something is missing or wrong."""
    env = os.environ if env is None else env
    db_url = database_url(env)
    redis_url = _url(env, "STREAM_REDIS_URL", ("redis", "rediss", "unix"))
    ttl_text = env.get("STREAM_CACHE_TTL", "60").strip() or "60"
    if not ttl_text.isascii() or not ttl_text.isdigit() or int(ttl_text) > 86400:
        raise ConfigError("STREAM_CACHE_TTL must be a whole number of seconds, 0..86400")
    retry_text = env.get("STREAM_WRITE_RETRY_SECONDS", "15").strip() or "15"
    try:
        retry = float(retry_text)
    except ValueError:
        retry = -1.0
    if not 0 <= retry <= 25:
        raise ConfigError("STREAM_WRITE_RETRY_SECONDS must be a number of seconds, 0..25")
    release = env.get("STREAM_RELEASE_ID", "").strip()
    if release and not _RELEASE_ID.fullmatch(release):
        raise ConfigError("STREAM_RELEASE_ID must be 1-64 characters of [A-Za-z0-9._-], not starting with . or -")
    accel = env.get("STREAM_AUDIO_ACCEL", "").strip()
    if accel and not _ACCEL.fullmatch(accel):
        raise ConfigError("STREAM_AUDIO_ACCEL must be a location like /_media/ ([A-Za-z0-9_-] segments, "
                          "starting and ending with /)")
    return Config(
        database_url=db_url,
        redis_url=redis_url,
        media_dir=Path(env.get("STREAM_MEDIA_DIR", "").strip() or "media"),
        release=release or read_release(manifest),
        cache_ttl=int(ttl_text),
        write_retry_seconds=retry,
        audio_accel=accel,
    )


def load_env_file(path: Path, env: dict[str, str]) -> None:
    """Add KEY=VALUE lines of a systemd-style env file to `env`; variables already set win."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env.setdefault(key, value)
