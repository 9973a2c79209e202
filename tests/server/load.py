"""A bounded load test for ferrite serve (or any OpenAI-compatible server that exports
vLLM's metrics): the timed streams read SSE directly, the rest uses the official
OpenAI client.

  python tests/server/load.py --url http://127.0.0.1:8080 [--key K] [--streams 8]
         [--tokens 64] [--min-ratio 3]

1. One stream alone: generated tokens/s.
2. `--streams` concurrent streams (same length, ignore_eos): aggregate tokens/s, time to
   first token p50/p95, failures.
3. A shared-system-prompt workload: 2 waves of requests with one long system prompt and
   different questions; the prefix-cache hit rate from the server's counters.
4. At the end: nothing running or waiting and no KV block held.

Prints one JSON object; exits 1 if a request failed, KV blocks are still held, the
prefix-cache hit rate is below --min-hit-rate, or the ratio of (2) to (1) is below
--min-ratio (a speed figure: for a quiet machine, not for CI).
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx
import openai

SYSTEM = ("You are a careful assistant for a library. Answer questions about opening hours, loans, "
          "renewals, fines, reading rooms, printing, study spaces, accessibility and events. Keep answers "
          "short and polite, say when you do not know, and never invent a policy. The library opens at nine "
          "and closes at eight on weekdays, and opens from ten to four on Saturdays; it is closed on Sundays. "
          "Books may be borrowed for three weeks and renewed twice unless someone has reserved them.")
QUESTIONS = ["When do you open on Saturday?", "Can I renew a book?", "How long is a loan?",
             "Are you open on Sunday?", "Do you have study rooms?", "How do I print?",
             "Is there a fine for late books?", "Can I reserve a book?"]


def metrics(url):
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("vllm:") and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


async def stream_one(http, model, tokens, prompt):
    """One streamed completion; returns (ttft s, tokens, seconds). The SSE lines are read
    with httpx directly and only the usage chunk is parsed, so that on a small machine the
    load generator takes as little CPU as it can from the server it measures (the official
    client's per-chunk objects cost about as much as the server's own work per token)."""
    t0 = time.perf_counter()
    ttft = None
    n = 0
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"choices":[{' in line:
                ttft = time.perf_counter() - t0
            if '"completion_tokens"' in line:
                n = json.loads(line[len("data: "):])["usage"]["completion_tokens"]
    return ttft, n, time.perf_counter() - t0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", default="none")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--min-ratio", type=float, default=0.0)
    ap.add_argument("--min-hit-rate", type=float, default=0.0)
    a = ap.parse_args()
    client = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key=a.key, max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    http = httpx.AsyncClient(base_url=a.url, headers={"Authorization": f"Bearer {a.key}"}, timeout=600,
                             limits=httpx.Limits(max_connections=a.streams + 2))
    prompts = [f"Story {i}: Once upon a time, in a town by the sea," for i in range(a.streams)]
    failures = 0

    # Warm-up, then one stream alone.
    await stream_one(http, model, 8, prompts[0])
    _, n1, s1 = await stream_one(http, model, a.tokens, prompts[0])
    single = n1 / s1

    # Concurrent streams.
    t0 = time.perf_counter()
    results = await asyncio.gather(*(stream_one(http, model, a.tokens, p) for p in prompts), return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    failures += len(results) - len(ok)
    total = sum(n for _, n, _ in ok)
    ttfts = sorted(t for t, _, _ in ok if t is not None)
    aggregate = total / wall

    # Shared system prompt, two waves.
    before = metrics(a.url)

    async def ask(q):
        r = await client.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                                 messages=[{"role": "system", "content": SYSTEM},
                                                           {"role": "user", "content": q}])
        return r.usage.prompt_tokens
    shared = []
    for wave in range(2):
        shared += await asyncio.gather(*(ask(q) for q in QUESTIONS), return_exceptions=True)
    failures += sum(isinstance(r, BaseException) for r in shared)
    after = metrics(a.url)
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]

    # Everything released.
    deadline = time.time() + 10
    while True:
        m = metrics(a.url)
        idle = m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
        if idle and m["vllm:kv_cache_usage_perc"] == 0 or time.time() > deadline:
            break
        await asyncio.sleep(0.05)

    report = {
        "model": model,
        "single_stream_tps": round(single, 2),
        "streams": a.streams,
        "aggregate_tps": round(aggregate, 2),
        "ratio": round(aggregate / single, 2),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3) if ttfts else None,
        "generated_tokens": total,
        "failed_requests": failures,
        "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None,
        "prefix_cache_queried_tokens": int(queries),
        "kv_cache_usage_at_end": m["vllm:kv_cache_usage_perc"],
        "running_at_end": m["vllm:num_requests_running"],
        "preemptions": m.get("vllm:num_preemptions_total"),
    }
    print(json.dumps(report, indent=2))
    bad = (failures > 0 or report["ratio"] < a.min_ratio or m["vllm:kv_cache_usage_perc"] != 0 or not idle
           or (report["prefix_cache_hit_rate"] or 0) < a.min_hit_rate)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
