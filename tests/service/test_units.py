"""Pure unit tests of the stream service: Range parsing, request validation, routing, config."""

from __future__ import annotations

import io
import json
import wave

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamsvc import config, seed
from streamsvc.http import HTTPError, Router, read_body
from streamsvc.ranges import ByteRange, RangeNotSatisfiable, parse_range
from streamsvc.validation import MAX_ID, BadRequest, Play, parse_id, parse_idempotency_key, parse_play

# ------------------------------------------------------------------ parse_range, by example


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-0", 10, (0, 0)),
    ("bytes=0-9", 10, (0, 9)),
    ("bytes=2-5", 10, (2, 5)),
    ("bytes=5-", 10, (5, 9)),
    ("bytes=9-", 10, (9, 9)),
    ("bytes=3-1000", 10, (3, 9)),
    ("bytes=-1", 10, (9, 9)),
    ("bytes=-4", 10, (6, 9)),
    ("bytes=-10", 10, (0, 9)),
    ("bytes=-999", 10, (0, 9)),
    ("BYTES=1-2", 10, (1, 2)),
    ("bytes= 1-2 ", 10, (1, 2)),
])
def test_satisfiable_ranges(header, size, expected):
    got = parse_range(header, size)
    assert (got.start, got.end) == expected
    assert got.length == expected[1] - expected[0] + 1
    assert got.content_range == f"bytes {expected[0]}-{expected[1]}/{size}"


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=5-2", 10), ("bytes=-0", 10), ("bytes=0-0", 0),
    ("bytes=-5", 0), ("bytes=0-", 0), ("bytes=", 10), ("bytes=-", 10), ("bytes=a-b", 10), ("bytes=1-2-3", 10),
    ("bytes=+1-2", 10), ("bytes=1 - 2", 10), ("bytes=0x1-2", 10), ("bytes=١-٢", 10), ("bytes=1-2;", 10),
    ("bytes=12345678901234567890-", 10), ("", 10), ("bytes", 10), ("=0-1", 10), ("by tes=0-1", 10),
])
def test_malformed_or_unsatisfiable_ranges_are_416(header, size):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize("header", [None, "items=0-5", "none=1", "bytes=0-1,4-5", "bytes=0-1, junk"])
def test_absent_foreign_unit_and_multi_range_mean_the_whole_body(header):
    assert parse_range(header, 10) is None


# ------------------------------------------------------------------ parse_range, properties

sizes = st.integers(min_value=0, max_value=10**6)
numbers = st.integers(min_value=0, max_value=10**7)


@given(size=sizes, first=numbers, last=st.none() | numbers)
def test_first_last_ranges_follow_rfc_9110(size, first, last):
    header = f"bytes={first}-" + ("" if last is None else str(last))
    if (last is not None and last < first) or first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    got = parse_range(header, size)
    end = size - 1 if last is None else min(last, size - 1)
    assert got == ByteRange(first, end, size)


@given(size=sizes, suffix=numbers)
def test_suffix_ranges_select_the_last_bytes(size, suffix):
    if suffix == 0 or size == 0:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes=-{suffix}", size)
        return
    got = parse_range(f"bytes=-{suffix}", size)
    assert got.length == min(suffix, size)
    assert got.end == size - 1


@given(header=st.text(max_size=40) | st.from_regex(r"\Abytes=[0-9 ,-]{0,12}\Z"), size=sizes)
def test_any_header_gives_none_a_range_inside_the_body_or_416(header, size):
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if got is not None:
        assert 0 <= got.start <= got.end < size
        assert got.length == got.end - got.start + 1 >= 1
        assert got.content_range == f"bytes {got.start}-{got.end}/{size}"


# ------------------------------------------------------------------ ids and play bodies


@pytest.mark.parametrize("text", ["1", "42", str(MAX_ID)])
def test_valid_ids(text):
    assert parse_id(text) == int(text)


@pytest.mark.parametrize("text", ["0", "-1", "+1", "01", "1.0", "1e3", "abc", "", " 1", "1 ", "١", "²",
                                  "../etc/passwd", "..", "%2e%2e", str(MAX_ID + 1), "9" * 40])
def test_malformed_ids_are_refused(text):
    with pytest.raises(BadRequest):
        parse_id(text)


@given(st.text(max_size=30) | st.integers(min_value=-5, max_value=MAX_ID + 5).map(str))
def test_parse_id_accepts_only_canonical_positive_integers(text):
    canonical = text.isascii() and text.isdigit() and not text.startswith("0") and int(text) <= MAX_ID
    try:
        value = parse_id(text)
    except BadRequest:
        assert not canonical, text
        return
    assert canonical and str(value) == text and 1 <= value <= MAX_ID


def _body(obj) -> bytes:
    return json.dumps(obj).encode()


def test_a_valid_play():
    assert parse_play(_body({"track_id": 3, "listener_id": "fan_01-x"})) == Play(3, "fan_01-x")


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b"null", b'"x"', b"{", b"\xff\xfe", b'{"track_id": NaN, "listener_id": "a"}',
    _body({"track_id": 1}), _body({"listener_id": "a"}), _body({"track_id": "1", "listener_id": "a"}),
    _body({"track_id": 1.0, "listener_id": "a"}), _body({"track_id": True, "listener_id": "a"}),
    _body({"track_id": 0, "listener_id": "a"}), _body({"track_id": -3, "listener_id": "a"}),
    _body({"track_id": MAX_ID + 1, "listener_id": "a"}), _body({"track_id": 1, "listener_id": ""}),
    _body({"track_id": 1, "listener_id": "a" * 65}), _body({"track_id": 1, "listener_id": "a b"}),
    _body({"track_id": 1, "listener_id": "a\n"}), _body({"track_id": 1, "listener_id": "é"}),
    _body({"track_id": 1, "listener_id": 7}), _body({"track_id": 1, "listener_id": "a", "extra": 1}),
    b"[" * 3000 + b"]" * 3000, b'{"track_id": ' + b"9" * 5000 + b', "listener_id": "a"}',
])
def test_malformed_play_bodies_are_refused_with_one_line(body):
    with pytest.raises(BadRequest) as caught:
        parse_play(body)
    assert "\n" not in str(caught.value)


listener_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@given(track_id=st.integers(min_value=1, max_value=MAX_ID), listener_id=listener_ids)
def test_every_valid_play_is_accepted_as_sent(track_id, listener_id):
    assert parse_play(_body({"listener_id": listener_id, "track_id": track_id})) == Play(track_id, listener_id)


@given(track_id=json_values, listener_id=json_values)
def test_a_play_is_accepted_only_with_a_positive_int_and_a_safe_listener(track_id, listener_id):
    body = _body({"track_id": track_id, "listener_id": listener_id})
    try:
        play = parse_play(body)
    except BadRequest:
        assert not (type(track_id) is int and 1 <= track_id <= MAX_ID and isinstance(listener_id, str)
                    and 1 <= len(listener_id) <= 64 and listener_id.isascii()
                    and all(c.isalnum() or c in "_-" for c in listener_id))
        return
    assert play == Play(track_id, listener_id)


@given(st.binary(max_size=200) | json_values.map(_body))
def test_any_body_gives_a_play_or_bad_request(body):
    try:
        play = parse_play(body)
    except BadRequest:
        return
    assert type(play.track_id) is int and play.track_id >= 1


def test_an_oversized_body_is_refused():
    with pytest.raises(BadRequest, match="larger than"):
        parse_play(b" " * 5000)


# ------------------------------------------------------------------ routing and bodies


def _router() -> Router:
    router = Router()
    router.add("/tracks", get=lambda env: "list")
    router.add("/tracks/<track_id>", get=lambda env, track_id: track_id)
    router.add("/plays", post=lambda env: "play")
    return router


def test_routes_match_whole_paths_and_pass_segments():
    router = _router()
    handler, args = router.match("GET", "/tracks/12")
    assert args == {"track_id": "12"} and handler({}, **args) == "12"
    assert router.match("HEAD", "/tracks")[0]({}) == "list"


@pytest.mark.parametrize("path", ["/", "/tracks/", "/tracks/1/2", "/trackss", "/tracks/../etc/passwd", "//tracks"])
def test_unknown_paths_are_404(path):
    with pytest.raises(HTTPError) as caught:
        _router().match("GET", path)
    assert caught.value.status == 404


def test_wrong_method_is_405_with_allow():
    with pytest.raises(HTTPError) as caught:
        _router().match("DELETE", "/tracks")
    assert caught.value.status == 405
    assert ("Allow", "GET, HEAD") in caught.value.headers
    with pytest.raises(HTTPError) as caught:
        _router().match("GET", "/plays")
    assert ("Allow", "POST") in caught.value.headers


@pytest.mark.parametrize(("environ", "status"), [
    ({"CONTENT_LENGTH": "5000"}, 413),
    ({"CONTENT_LENGTH": "-1"}, 400),
    ({"CONTENT_LENGTH": "12x"}, 400),
    ({}, 411),
    ({"wsgi.input_terminated": True}, 413),
])
def test_body_limits(environ, status):
    environ = {"wsgi.input": io.BytesIO(b"x" * 5000), **environ}
    with pytest.raises(HTTPError) as caught:
        read_body(environ, 4096)
    assert caught.value.status == status


# ------------------------------------------------------------------ hostile input, properties (see test_hostile.py)


@given(size=sizes, big=st.integers(min_value=10**19, max_value=10**40), form=st.sampled_from(["{}-", "-{}", "0-{}"]))
def test_numbers_of_more_than_19_digits_are_416_never_an_overflow(size, big, form):
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + form.format(big), size)


@given(size=st.integers(min_value=1, max_value=10**12), data=st.data())
def test_a_range_round_trips_through_its_content_range(size, data):
    first = data.draw(st.integers(min_value=0, max_value=size - 1))
    last = data.draw(st.integers(min_value=first, max_value=size - 1))
    got = parse_range(f"bytes={first}-{last}", size)
    assert got.content_range == f"bytes {first}-{last}/{size}"
    assert parse_range("bytes=" + got.content_range.split(" ")[1].split("/")[0], size) == got


@given(st.text(max_size=80) | st.from_regex(r"\A[A-Za-z0-9_-]{1,70}\Z"))
def test_idempotency_keys_are_accepted_only_when_safe(text):
    safe = 1 <= len(text) <= 64 and text.isascii() and all(c.isalnum() or c in "_-" for c in text)
    try:
        key = parse_idempotency_key(text)
    except BadRequest as exc:
        assert "\n" not in str(exc)
        assert text != "" and not safe, text
        return
    assert key is None if text == "" else (key == text and safe)


@given(length=st.text(max_size=25) | st.integers(min_value=-5, max_value=10_000).map(str),
       body=st.binary(max_size=6000))
def test_read_body_gives_exactly_content_length_bytes_or_a_4xx(length, body):
    environ = {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": length}
    digits = length.isascii() and length.isdigit()
    # 411 without a length, 400 for one that is not a number, 413 over the limit, 400 for a short body.
    refusal = (411 if not length else 400 if not digits else 413 if int(length) > 4096
               else 400 if len(body) < int(length) else None)
    try:
        got = read_body(environ, 4096)
    except HTTPError as exc:
        assert exc.status == refusal, (length, len(body), exc.status)
        return
    assert refusal is None and got == body[:int(length)]


@given(st.text(max_size=60))
def test_a_path_segment_never_carries_a_slash_into_a_handler(path):
    try:
        _handler, args = _router().match("GET", "/tracks/" + path)
    except HTTPError as exc:
        assert exc.status == 404 and (path == "" or "/" in path), path
        return
    assert "/" not in args["track_id"] and args["track_id"] == path


# ------------------------------------------------------------------ config


def test_config_reads_the_environment_and_never_shows_a_password(tmp_path):
    env = {"STREAM_DATABASE_URL": "postgresql://stream:s3cr%40t@db1:5432/stream",
           "STREAM_REDIS_URL": "redis://app:r3dis@cache1:6379/0", "STREAM_MEDIA_DIR": "/srv/media",
           "STREAM_CACHE_TTL": "30"}
    cfg = config.from_env(env, manifest=tmp_path / "absent.json")
    assert cfg.release == "unknown" and cfg.cache_ttl == 30 and str(cfg.media_dir) == "/srv/media"
    shown = repr(cfg) + config.redact(cfg.database_url) + config.redact(cfg.redis_url)
    assert "s3cr" not in shown and "r3dis" not in shown
    assert config.redact(cfg.database_url) == "postgresql://stream:***@db1:5432/stream"
    assert cfg.scrub("auth failed for s3cr@t and s3cr%40t and r3dis") == "auth failed for *** and *** and ***"


def test_a_primary_and_replicas_url_is_accepted_and_redacted(tmp_path):
    url = "postgresql://stream:s3cret@10.0.0.20:5432,10.0.0.21:5432/stream?target_session_attrs=read-write"
    cfg = config.from_env({"STREAM_DATABASE_URL": url, "STREAM_REDIS_URL": "redis://c/0",
                           "STREAM_WRITE_RETRY_SECONDS": "7.5"}, manifest=tmp_path / "absent.json")
    assert cfg.database_url == url and cfg.write_retry_seconds == 7.5
    assert config.redact(url) == url.replace("s3cret", "***")


def test_release_id_comes_from_the_environment_then_the_manifest(tmp_path):
    env = {"STREAM_DATABASE_URL": "postgresql://db/x", "STREAM_REDIS_URL": "redis://cache/0"}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"release_id": "20250102030405-abcdef1"}))
    assert config.from_env(env, manifest=manifest).release == "20250102030405-abcdef1"
    assert config.from_env({**env, "STREAM_RELEASE_ID": "r1"}, manifest=manifest).release == "r1"
    manifest.write_text(json.dumps({"release_id": "../evil"}))
    assert config.from_env(env, manifest=manifest).release == "unknown"


@pytest.mark.parametrize(("change", "message"), [
    ({"STREAM_DATABASE_URL": ""}, "STREAM_DATABASE_URL is not set"),
    ({"STREAM_DATABASE_URL": "mysql://db/x"}, "must start with postgresql://"),
    ({"STREAM_REDIS_URL": "redis://cache:port/0"}, "STREAM_REDIS_URL is not a valid URL"),
    ({"STREAM_CACHE_TTL": "-1"}, "STREAM_CACHE_TTL"),
    ({"STREAM_RELEASE_ID": ".hidden"}, "STREAM_RELEASE_ID"),
    ({"STREAM_DATABASE_URL": "postgresql://u:topsecret@db1:5432,db2:x/x"}, "STREAM_DATABASE_URL is not a valid URL"),
    ({"STREAM_WRITE_RETRY_SECONDS": "30"}, "STREAM_WRITE_RETRY_SECONDS"),
    ({"STREAM_WRITE_RETRY_SECONDS": "nan"}, "STREAM_WRITE_RETRY_SECONDS"),
    ({"STREAM_AUDIO_ACCEL": "_media/"}, "STREAM_AUDIO_ACCEL"),
    ({"STREAM_AUDIO_ACCEL": "/_media"}, "STREAM_AUDIO_ACCEL"),
    ({"STREAM_AUDIO_ACCEL": "/../etc/"}, "STREAM_AUDIO_ACCEL"),
    ({"STREAM_AUDIO_ACCEL": "/a b/"}, "STREAM_AUDIO_ACCEL"),
])
def test_bad_config_is_one_line_without_secrets(change, message):
    env = {"STREAM_DATABASE_URL": "postgresql://u:topsecret@db/x", "STREAM_REDIS_URL": "redis://u:topsecret@c/0",
           **change}
    with pytest.raises(config.ConfigError, match=message) as caught:
        config.from_env(env)
    assert "topsecret" not in str(caught.value) and "\n" not in str(caught.value)


def test_env_file_fills_in_but_does_not_override(tmp_path):
    path = tmp_path / "stream.env"
    path.write_text("# comment\nSTREAM_A=one\nSTREAM_B=\"two words\"\n\nSTREAM_C=three\n")
    env = {"STREAM_C": "already"}
    config.load_env_file(path, env)
    assert env == {"STREAM_A": "one", "STREAM_B": "two words", "STREAM_C": "already"}
    path.write_text("not a pair\n")
    with pytest.raises(config.ConfigError, match="stream.env:1"):
        config.load_env_file(path, {})


# ------------------------------------------------------------------ seed audio


def test_seed_audio_is_deterministic_valid_wav_of_the_catalogued_length():
    track = seed.catalogue()[0]
    data = seed.render_wav(track.frequency, track.seconds)
    assert data == seed.render_wav(track.frequency, track.seconds)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, seed.RATE)
        assert wav.getnframes() * 1000 // wav.getframerate() == track.duration_ms
    assert 100_000 < len(data) < 400_000
    assert len({t.audio_file for t in seed.catalogue()}) == len(seed.catalogue()) == 12
