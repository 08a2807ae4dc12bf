"""The prefix cache is isolated per tenant: cached_tokens must not let one API key test guesses
against prompts another key sent. Keys of one tenant share, as can everyone with
--shared-prefix-cache; vLLM's cache_salt separates further within a tenant."""

from __future__ import annotations

import httpx

from inferd.serve.app import build_app

KEYS = {"sk-alice": "alice", "sk-alice-2": "alice", "sk-bob": "bob"}


async def cached(client: httpx.AsyncClient, key: str, prompt: list[int], **extra) -> int:
    r = await client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "tiny", "prompt": prompt, "max_tokens": 1, **extra})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


async def test_one_key_cannot_hit_another_keys_prefix_cache(engine):
    secret = list(range(1000, 1080))  # five full blocks of 16
    async with client_for(build_app({"tiny": engine}, api_keys=KEYS)) as client:
        assert await cached(client, "sk-alice", secret) == 0
        assert await cached(client, "sk-alice", secret) == 64  # the owner reuses it
        assert await cached(client, "sk-bob", secret) == 0  # another tenant learns nothing
        assert await cached(client, "sk-alice-2", secret) == 64  # a key of the same tenant shares
        assert await cached(client, "sk-alice", secret, cache_salt="job-7") == 0  # salted within it
        assert await cached(client, "sk-alice", secret, cache_salt="job-7") == 64


async def test_shared_prefix_cache_option(engine):
    prompt = list(range(2000, 2080))
    async with client_for(build_app({"tiny": engine}, api_keys=KEYS, shared_prefix_cache=True)) as client:
        assert await cached(client, "sk-alice", prompt) == 0
        assert await cached(client, "sk-bob", prompt) == 64
