"""What owners cost: API-key checks (malformed, unknown, revoked, valid) through the gateway, the key check
alone, and the quota checks one upload runs, all against the Redis the gateway uses.

The four kinds of key are sent interleaved, so load drifts hit all of them alike; a malformed key must not
answer measurably faster than a well-formed unknown one (both are hashed and looked up the same way).

    .venv/bin/python -m bench.bench_auth [--url http://127.0.0.1:8000] [--redis-url redis://...] [--n 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from common.jobs import JobStore
from common.webhooks import OWNER_PREFIX
from gateway.auth import Owner
from gateway.keys import KEY_INDEX, KEY_PREFIX, KeyRefused, KeyStore, Limits, hash_key
from gateway.quotas import Quotas


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"{statistics.median(ordered) * 1000:.3f} | {p95 * 1000:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()

    client = JobStore.from_url(args.redis_url).redis
    keys = KeyStore(client)
    valid, valid_record = keys.create("bench-valid")
    revoked, record = keys.create("bench-revoked")
    keys.revoke(record.id)
    try:
        run(args, client, keys, valid, revoked)
    finally:  # leave no bench keys behind in the developer's Redis
        for token, key in ((valid, valid_record), (revoked, record)):
            client.delete(KEY_PREFIX + hash_key(token))
            client.hdel(KEY_INDEX, key.id)
            client.delete(OWNER_PREFIX + key.owner)


def run(args, client, keys: KeyStore, valid: str, revoked: str) -> None:
    tokens = {"malformed": "not-a-key", "unknown": "ek_" + "Q" * 43, "revoked": revoked, "valid": valid}

    http = {name: [] for name in tokens}
    direct = {name: [] for name in tokens}
    with httpx.Client(base_url=args.url, timeout=10) as session:
        for _ in range(args.n):
            for name, token in tokens.items():
                started = time.perf_counter()
                reply = session.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                http[name].append(time.perf_counter() - started)
                assert reply.status_code == (200 if name == "valid" else 401), (name, reply.status_code)
                started = time.perf_counter()
                try:
                    keys.authenticate(token)
                except KeyRefused:
                    pass
                direct[name].append(time.perf_counter() - started)

    print(f"API-key checks, {args.n} of each, interleaved\n")
    print("| key | GET /api/v1/me median ms | p95 ms | KeyStore.authenticate median ms | p95 ms |")
    print("|---|---|---|---|---|")
    for name in tokens:
        print(f"| {name} | {_ms(http[name])} | {_ms(direct[name])} |")
    gap = statistics.median(http["unknown"]) - statistics.median(http["malformed"])
    print(f"\nmedian(unknown) - median(malformed) over HTTP: {gap * 1e6:+.0f} µs")

    quotas = Quotas(client, args.redis_url, 60, 3600)
    owner = Owner("bench:quotas", "key", "bench", Limits(10**6, 10**6, 10**15, 10))
    steps = {"uploads per minute (limits, moving window)": [], "jobs at once (Lua)": [],
             "bytes stored: room (Lua)": [], "bytes stored: add (Lua)": []}
    for i in range(args.n):
        job_id = f"bench{i:027d}"
        calls = (
            lambda: quotas.hit_upload(owner),
            lambda job_id=job_id: quotas.reserve_active(owner, job_id),
            lambda: quotas.room_for(owner, 1000),
            lambda job_id=job_id: quotas.add_stored(owner, job_id, 1000),
        )
        for name, call in zip(steps, calls, strict=True):
            started = time.perf_counter()
            call()
            steps[name].append(time.perf_counter() - started)
        quotas.release(owner, job_id)
    print(f"\nQuota checks of one upload ({args.n} uploads of one owner, one at a time)\n")
    print("| check | median ms | p95 ms |")
    print("|---|---|---|")
    for name, samples in steps.items():
        print(f"| {name} | {_ms(samples)} |")


if __name__ == "__main__":
    main()
