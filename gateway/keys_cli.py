"""`python -m gateway keys create NAME [limits] | list | revoke ID_OR_NAME`, on the Redis of EMOJI_REDIS_URL.

`create` prints the key once; only its hash is kept, so a lost key cannot be shown again (revoke it and
make another)."""

from __future__ import annotations

import argparse
import sys

import redis

from common.webhooks import owner_secret
from gateway.keys import KeyStore
from gateway.settings import GatewaySettings

LIMIT_FLAGS = {
    "max_active_jobs": "jobs queued or running at once",
    "uploads_per_minute": "uploads per minute",
    "max_stored_bytes": "bytes its jobs may keep in storage",
    "max_live_viewers": "live pages open at once",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m gateway keys", description="Manage API keys.")
    commands = top.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print it (once)")
    create.add_argument("name", help="who or what the key is for, e.g. 'acme-prod'")
    for name, what in LIMIT_FLAGS.items():
        create.add_argument(f"--{name.replace('_', '-')}", type=int, metavar="N",
                            help=f"{what} (0: no limit; default: the gateway's EMOJI_KEY_* setting)")
    commands.add_parser("list", help="every key: id, name, created, revoked, limits")
    revoke = commands.add_parser("revoke", help="revoke a key by id, or every key with that name")
    revoke.add_argument("id_or_name")
    return top


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = GatewaySettings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = KeyStore(client)
    try:
        if args.command == "create":
            limits = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
            if any(v < 0 for v in limits.values()):
                print("limits must be 0 (no limit) or more", file=sys.stderr)
                return 2
            token, record = keys.create(args.name, limits)
            secret = owner_secret(client, record.owner)
            print(f"key:            {token}")
            print(f"id:             {record.id}")
            print(f"name:           {record.name}")
            print(f"webhook secret: {secret}")
            print("Keep the key now: it is stored only as a hash and cannot be shown again.", file=sys.stderr)
        elif args.command == "list":
            print(f"{'id':<14}{'name':<24}{'created':<27}{'revoked':<27}limits")
            for key in keys.list():
                limits = ", ".join(f"{k}={v}" for k, v in key.limits.items()) or "defaults"
                print(f"{key.id:<14}{key.name:<24}{key.created_at:<27}{key.revoked_at or '-':<27}{limits}")
        elif args.command == "revoke":
            revoked = keys.revoke(args.id_or_name)
            if not revoked:
                print(f"no live key with id or name {args.id_or_name!r}; see `python -m gateway keys list`",
                      file=sys.stderr)
                return 1
            for key in revoked:
                print(f"revoked {key.id} ({key.name})")
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    return 0
