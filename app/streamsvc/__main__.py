"""Operator commands: `python -m streamsvc [--env-file FILE] {migrate,seed,health}`.

Configuration comes from the environment (see streamsvc.config); `--env-file` reads the service's
env file first, so no secret has to be typed on a command line. Errors are one line on stderr and
exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg
import redis

from streamsvc import config as config_mod
from streamsvc import migrate, seed


def _cmd_migrate(args: argparse.Namespace, env: dict[str, str]) -> int:
    migrate.migrate(config_mod.database_url(env))
    return 0


def _cmd_seed(args: argparse.Namespace, env: dict[str, str]) -> int:
    media = args.media_dir or env.get("STREAM_MEDIA_DIR")
    if not media:
        raise config_mod.ConfigError("give --media-dir or set STREAM_MEDIA_DIR")
    written = seed.write_media(Path(media))
    print(f"seed: {len(written)} audio files written in {media} ({len(seed.catalogue()) - len(written)} unchanged)")
    if not args.no_db:
        inserted, updated = seed.seed_database(config_mod.database_url(env))
        print(f"seed: catalogue {inserted} inserted, {updated} updated")
    return 0


def _cmd_health(args: argparse.Namespace, env: dict[str, str]) -> int:
    from streamsvc.wsgi import StreamApp

    app = StreamApp(config_mod.from_env(env))
    try:
        response = app.healthz({})
    finally:
        app.close()
    sys.stdout.write(response.body.decode() if isinstance(response.body, bytes) else "")
    return 0 if response.status == 200 else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streamsvc", description="Stream service operator commands.")
    parser.add_argument("--env-file", type=Path, help="Read KEY=VALUE lines from this file first "
                                                      "(variables already in the environment win).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="Apply pending SQL migrations (safe to run twice, and concurrently).")
    seed_cmd = commands.add_parser("seed", help="Load the reference catalogue and write its audio files.")
    seed_cmd.add_argument("--media-dir", help="Where to write the audio files (default: $STREAM_MEDIA_DIR).")
    seed_cmd.add_argument("--no-db", action="store_true", help="Only write the audio files (for extra stream hosts).")
    commands.add_parser("health", help="Print the /healthz answer; exit 1 unless database and cache are ok.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    scrub = str
    try:
        if args.env_file:
            config_mod.load_env_file(args.env_file, env)
        scrub = config_mod.Config(env.get("STREAM_DATABASE_URL", ""), env.get("STREAM_REDIS_URL", ""),
                                  Path("."), "").scrub
        handler = {"migrate": _cmd_migrate, "seed": _cmd_seed, "health": _cmd_health}[args.command]
        return handler(args, env)
    except (config_mod.ConfigError, migrate.MigrationError, psycopg.Error, redis.RedisError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"streamsvc: error: {scrub(message)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
