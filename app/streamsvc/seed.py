"""A small reference catalogue: twelve sine tones (one per semitone from A3), WAV files made locally.

Both halves are idempotent: a media file is rewritten only when its bytes differ, a catalogue row is
inserted when its audio file is not in `tracks` yet and updated only when its metadata changed. On a
fresh database the tracks get ids 1..12 in catalogue order. Nothing is downloaded.
"""

from __future__ import annotations

import array
import io
import math
import os
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import psycopg

from streamsvc.db import CONNECT_TIMEOUT
from streamsvc.migrate import LOCK_KEY

RATE = 22050  # samples per second, mono, 16 bit: about 43 KiB per second of audio
NOTES = ["A", "A#", "B", "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#"]
ARTIST = "The Reference Tones"


@dataclass(frozen=True)
class SeedTrack:
    title: str
    artist: str
    seconds: int
    frequency: int  # whole hertz, so one second of samples repeats exactly
    audio_file: str

    @property
    def duration_ms(self) -> int:
        return self.seconds * 1000


def catalogue() -> list[SeedTrack]:
    """The twelve reference tracks, 4 to 7 seconds each."""
    tracks = []
    for i, note in enumerate(NOTES):
        frequency = round(220 * 2 ** (i / 12))
        slug = note.lower().replace("#", "-sharp")
        tracks.append(SeedTrack(title=f"Tone {i + 1:02d}: {note} ({frequency} Hz)", artist=ARTIST,
                                seconds=4 + i % 4, frequency=frequency, audio_file=f"tone-{i + 1:02d}-{slug}.wav"))
    return tracks


def render_wav(frequency: int, seconds: int, rate: int = RATE) -> bytes:
    """A mono 16-bit WAV of a sine tone at half scale, with 10 ms fades; the same bytes every time."""
    second = array.array("h", (round(16383 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(rate)))
    samples = second * seconds
    fade = rate // 100
    for n in range(fade):
        samples[n] = samples[n] * n // fade
        samples[-1 - n] = samples[-1 - n] * n // fade
    if sys.byteorder == "big":
        samples.byteswap()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_media(media_dir: Path, tracks: list[SeedTrack] | None = None) -> list[Path]:
    """Write the tracks' audio files into `media_dir`; return the files written (changed or new)."""
    media_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for track in tracks or catalogue():
        path = media_dir / track.audio_file
        data = render_wav(track.frequency, track.seconds)
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=".seed-", dir=media_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(path)
    return written


def seed_database(dsn: str, tracks: list[SeedTrack] | None = None) -> tuple[int, int]:
    """Insert or update the catalogue rows; return (inserted, updated)."""
    inserted = updated = 0
    with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, application_name="streamsvc-seed") as conn, \
            conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        for t in tracks or catalogue():
            cur = conn.execute(
                "UPDATE tracks SET title = %s, artist = %s, duration_ms = %s WHERE audio_file = %s"
                " AND (title, artist, duration_ms) IS DISTINCT FROM (%s, %s, %s)",
                (t.title, t.artist, t.duration_ms, t.audio_file, t.title, t.artist, t.duration_ms))
            updated += cur.rowcount
            cur = conn.execute(
                "INSERT INTO tracks (title, artist, duration_ms, audio_file) SELECT %s, %s, %s, %s"
                " WHERE NOT EXISTS (SELECT 1 FROM tracks WHERE audio_file = %s)",
                (t.title, t.artist, t.duration_ms, t.audio_file, t.audio_file))
            inserted += cur.rowcount
    return inserted, updated
