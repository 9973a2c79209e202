"""ferrite serve, driven by the official OpenAI Python client (and raw HTTP for what the
client cannot send). Run by tests/server.rs against real servers on loopback:

  FERRITE_URL       the main server (parallel 8, API key FERRITE_KEY)
  FERRITE_KEY       its API key
  FERRITE_LIMITS_URL  a server with tight limits: --ctx 256 --parallel 1 --queue 1 --max-body-mb 1
  FERRITE_QUEUE_URL   one running slot and a long context: --ctx 2048 --parallel 1 --queue 1
"""

import json
import os
import threading
import time
import unittest

import httpx
import openai

URL = os.environ["FERRITE_URL"]
KEY = os.environ["FERRITE_KEY"]
LIMITS = os.environ["FERRITE_LIMITS_URL"]
QUEUE = os.environ["FERRITE_QUEUE_URL"]

client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)
limits = openai.OpenAI(base_url=LIMITS + "/v1", api_key="none", max_retries=0, timeout=120)
MODEL = client.models.list().data[0].id
Q = [{"role": "user", "content": "What is the capital of France?"}]


def metrics(url=URL):
    text = httpx.get(url + "/metrics").text
    out = {}
    for line in text.splitlines():
        if line.startswith("vllm:") and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def wait_idle(url=URL, timeout=20):
    """Waits until nothing runs or waits and no KV block is held; returns the metrics."""
    deadline = time.time() + timeout
    while True:
        m = metrics(url)
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0 and m["vllm:kv_cache_usage_perc"] == 0:
            return m
        if time.time() > deadline:
            raise AssertionError(f"server not idle: {m}")
        time.sleep(0.05)


def raw(path, body, url=URL, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return httpx.post(url + path, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw)


class Api(unittest.TestCase):
    def test_models_and_health(self):
        ids = [m.id for m in client.models.list().data]
        self.assertEqual(ids, [MODEL])
        self.assertEqual(httpx.get(URL + "/health").status_code, 200)

    def test_chat(self):
        r = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=24, temperature=0)
        c = r.choices[0]
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(c.message.role, "assistant")
        self.assertTrue(c.message.content)
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertLessEqual(r.usage.completion_tokens, 24)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        # Content-part arrays are the same message.
        parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}]
        r2 = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=24, temperature=0)
        self.assertEqual(r2.choices[0].message.content, c.message.content)
        # max_completion_tokens is max_tokens.
        r3 = client.chat.completions.create(model=MODEL, messages=Q, max_completion_tokens=3, temperature=0)
        self.assertEqual(r3.usage.completion_tokens, 3)
        self.assertEqual(r3.choices[0].finish_reason, "length")
        # ... and wins over the deprecated max_tokens when both are given.
        r4 = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=20, max_completion_tokens=2, temperature=0)
        self.assertEqual(r4.usage.completion_tokens, 2)

    def test_completions(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text.startswith(" Paris"), r.choices[0].text)
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertEqual(r.choices[0].finish_reason, "length")
        # Token-id prompts and several prompts at once.
        ids = raw("/tokenize", {"content": "The capital of France is"}).json()["tokens"]
        self.assertEqual(len(ids), r.usage.prompt_tokens)
        r2 = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=8, temperature=0)
        self.assertEqual([c.text for c in r2.choices], [r.choices[0].text] * 2)

    def test_stream_with_usage_matches_whole_response(self):
        whole = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=32, temperature=0)
        chunks = list(client.chat.completions.create(model=MODEL, messages=Q, max_tokens=32, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finals, [whole.choices[0].finish_reason])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        # Completions stream the same way.
        s = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                           temperature=0, stream=True))
        self.assertTrue("".join(c.choices[0].text for c in s).startswith(" Paris"))

    def test_stop_strings(self):
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16,
                                      temperature=0, stop=["\n"])
        self.assertEqual(r.choices[0].text, " Paris.")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16,
                                      temperature=0, stop="aris")
        self.assertEqual(r.choices[0].text, " P")
        s = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=16,
                                           temperature=0, stop=["United"], stream=True))
        text = "".join(c.choices[0].text for c in s)
        self.assertEqual(text, " Paris.\n\nThe ")
        self.assertEqual(s[-1].choices[0].finish_reason, "stop")

    def test_seed_reproducibility(self):
        def run(seed):
            return client.chat.completions.create(model=MODEL, messages=Q, max_tokens=24, temperature=1.0,
                                                  seed=seed).choices[0].message.content
        a, b = run(1234), run(1234)
        self.assertEqual(a, b)
        others = {run(s) for s in (1, 2, 3)}
        self.assertTrue(len(others | {a}) > 1, "different seeds never differ")
        # n choices differ from each other but each is reproducible.
        r1 = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=16, temperature=1.0, seed=7, n=3)
        r2 = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=16, temperature=1.0, seed=7, n=3)
        self.assertEqual(len(r1.choices), 3)
        self.assertEqual([c.message.content for c in r1.choices], [c.message.content for c in r2.choices])
        self.assertEqual([c.index for c in r1.choices], [0, 1, 2])

    def test_logprobs(self):
        r = client.chat.completions.create(model=MODEL, messages=Q, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertLessEqual(t.logprob, 0)
            self.assertEqual(len(t.top_logprobs), 3)
            lps = [x.logprob for x in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            # Greedy: the chosen token is the most likely one.
            self.assertEqual(t.token, t.top_logprobs[0].token)
            self.assertAlmostEqual(t.logprob, lps[0], places=5)
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)
        text = "".join(t.token for t in content)
        self.assertTrue(r.choices[0].message.content.startswith(text.strip()[:3]))
        c = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                      temperature=0, logprobs=2)
        lp = c.choices[0].logprobs
        self.assertEqual("".join(lp.tokens), c.choices[0].text)
        self.assertEqual(len(lp.token_logprobs), 4)
        self.assertTrue(all(len(t) == 2 for t in lp.top_logprobs))
        self.assertEqual(lp.text_offset[0], 0)

    def test_json_object_output_parses(self):
        # The grammar allows objects of any length, and a 135M model sometimes loops until
        # max_tokens; so each prompt samples seeds until one completion stops, and that
        # one must parse as an object.
        for prompt in ["Describe a cat as a JSON object with name and age.",
                       "Give me a JSON object listing three colors.", "hello"]:
            finished = []
            for seed in range(1, 6):
                r = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=400,
                    temperature=0.7, seed=seed, response_format={"type": "json_object"})
                c = r.choices[0]
                if c.finish_reason == "length":
                    continue
                self.assertEqual(c.finish_reason, "stop", c.message.content)
                self.assertIsInstance(json.loads(c.message.content), dict, c.message.content)
                finished.append(seed)
                break
            self.assertTrue(finished, f"no seed of 1..5 finished a JSON object for {prompt!r}")

    def test_json_schema_is_refused_not_ignored(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=Q, max_tokens=4, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
        self.assertIn("json_schema", str(e.exception))

    def test_tools(self):
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        # SmolLM2 is not trained for tools: whatever it answers, the response is consistent.
        for stream in [False, True]:
            kw = dict(model=MODEL, messages=ask, tools=tools, max_tokens=48, temperature=0)
            if stream:
                calls, content, reason = [], "", None
                for ch in client.chat.completions.create(stream=True, **kw):
                    d = ch.choices[0].delta
                    content += d.content or ""
                    calls += d.tool_calls or []
                    reason = ch.choices[0].finish_reason or reason
            else:
                r = client.chat.completions.create(**kw)
                m, reason = r.choices[0].message, r.choices[0].finish_reason
                calls, content = m.tool_calls or [], m.content or ""
            if calls:
                # Calls end the answer ("tool_calls"), unless it ran out of tokens after one.
                self.assertIn(reason, ("tool_calls", "length"))
                for c in calls:
                    self.assertEqual(c.function.name, "get_weather")
                    self.assertIsInstance(json.loads(c.function.arguments), dict)
            else:
                self.assertIn(reason, ("stop", "length"))
                self.assertTrue(content)
        # A conversation through a call and the tool's answer renders and generates.
        call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        r = client.chat.completions.create(model=MODEL, tools=tools, max_tokens=8, messages=ask + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}])
        self.assertIn(r.choices[0].finish_reason, ("stop", "length", "tool_calls"))
        # What is not supported is refused, never ignored.
        for kw, param in [(dict(tool_choice="required"), "tool_choice"), (dict(parallel_tool_calls=False), "parallel_tool_calls"),
                          (dict(tool_choice={"type": "function", "function": {"name": "get_weather"}}), "tool_choice")]:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)) as e:
                client.chat.completions.create(model=MODEL, messages=ask, tools=tools, max_tokens=4, **kw)
            self.assertEqual(e.exception.body["param"], param)
        r = raw("/v1/chat/completions", {"messages": ask, "tools": [{"type": "function"}]})
        self.assertEqual((r.status_code, r.json()["error"]["param"]), (400, "tools"))

    def test_errors(self):
        # Malformed JSON and wrong types.
        for body in ["{not json", '{"messages": "hi"}', {"messages": Q, "temperature": "hot"},
                     {"messages": Q, "max_tokens": "ten"}, {"messages": Q, "stop": 5}, [1, 2]]:
            r = raw("/v1/chat/completions", body)
            self.assertEqual(r.status_code, 400, (body, r.text))
            self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        r = raw("/v1/completions", {"prompt": {"a": 1}})
        self.assertEqual(r.status_code, 400)
        r = raw("/v1/completions", {"prompt": [1, 10**9]})
        self.assertEqual(r.status_code, 400)
        # Unknown model.
        with self.assertRaises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gpt-17", messages=Q, max_tokens=4)
        self.assertEqual(e.exception.body["code"], "model_not_found")
        # Empty messages, bad max_tokens, out-of-range values.
        for kw in [dict(messages=[]), dict(messages=Q, max_tokens=0), dict(messages=Q, max_tokens=-1),
                   dict(messages=Q, temperature=3), dict(messages=Q, n=0), dict(messages=Q, top_logprobs=50, logprobs=True),
                   dict(messages=Q, logit_bias={"15": 5}), dict(messages=Q, stream_options={"include_usage": True}),
                   dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])]:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)):
                client.chat.completions.create(model=MODEL, **kw)
        # API key.
        for key in [None, "wrong"]:
            r = raw("/v1/chat/completions", {"messages": Q}, key=key)
            self.assertEqual(r.status_code, 401)
            self.assertEqual(r.json()["error"]["code"], "invalid_api_key")
        self.assertEqual(httpx.get(URL + "/v1/models").status_code, 401)
        # Unknown route; a known route with the wrong method: OpenAI-style errors too.
        r = httpx.get(URL + "/v2/nothing")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        r = httpx.get(URL + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
        self.assertEqual(r.status_code, 405)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertEqual(httpx.get(URL + "/v1/chat/completions").status_code, 401, "the key comes first")
        self.assertEqual(httpx.post(URL + "/health").status_code, 405)
        # A stop string could cut a JSON object short: the combination is refused.
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=Q, response_format={"type": "json_object"}, stop=["}"])
        self.assertEqual(e.exception.body["param"], "stop")

    def test_limits_server_errors(self):
        # A prompt longer than the context (256).
        long = "word " * 400
        with self.assertRaises(openai.BadRequestError) as e:
            limits.chat.completions.create(model="", messages=[{"role": "user", "content": long}], max_tokens=4)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError) as e:
            limits.completions.create(model="", prompt="hello", max_tokens=1000)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        # An oversized body (limit 1 MiB).
        r = raw("/v1/completions", {"prompt": "x" * (2 << 20)}, url=LIMITS, key=None)
        self.assertEqual(r.status_code, 413)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        # More requests than run (1) plus wait (1): the rest get 429 with Retry-After.
        statuses = []

        def one():
            r = raw("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": True},
                    url=LIMITS, key=None)
            statuses.append((r.status_code, r.headers.get("retry-after"), r.json()))
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(s for s, _, _ in statuses)
        self.assertIn(200, codes)
        self.assertIn(429, codes)
        self.assertEqual(set(codes), {200, 429}, statuses)
        for s, retry, body in statuses:
            if s == 429:
                self.assertEqual(retry, "1")
                self.assertEqual(body["error"]["type"], "rate_limit_error")
        wait_idle(LIMITS)

    def test_disconnect_cancels_and_frees_blocks(self):
        wait_idle()
        with httpx.stream("POST", URL + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"prompt": "Once upon a time", "max_tokens": 900, "stream": True,
                                "ignore_eos": True}, timeout=60) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                if got == 3:
                    break
            m = metrics()
            self.assertEqual(m["vllm:num_requests_running"], 1)
            self.assertGreater(m["vllm:kv_cache_usage_perc"], 0)
        # The connection is closed: the sequence is cancelled and its blocks freed at once.
        m = wait_idle(timeout=5)
        self.assertEqual(m["vllm:kv_cache_usage_perc"], 0)

    def test_disconnect_while_queued_cancels_at_once(self):
        # One running slot: B waits behind A. Closing B's connection takes it off the queue at
        # once, while A still runs (before, it waited until A finished and failed on its first
        # token).
        wait_idle(QUEUE)
        long = {"prompt": "Once upon a time", "max_tokens": 1500, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", QUEUE + "/v1/completions", json=long, timeout=120) as a:
            lines = a.iter_lines()  # kept: a dropped line iterator closes the response
            for line in lines:
                if line.startswith("data: "):
                    break
            short = {"prompt": "Hello", "max_tokens": 8, "stream": True}
            with httpx.stream("POST", QUEUE + "/v1/completions", json=short, timeout=60) as b:
                self.assertEqual(b.status_code, 200)
                # The gauges follow the engine's next step.
                deadline = time.time() + 5
                while metrics(QUEUE)["vllm:num_requests_waiting"] != 1:
                    self.assertLess(time.time(), deadline, "B never waited")
                    time.sleep(0.02)
            deadline = time.time() + 5
            while metrics(QUEUE)["vllm:num_requests_waiting"] != 0:
                self.assertLess(time.time(), deadline, "the closed request still waits")
                time.sleep(0.05)
            self.assertEqual(metrics(QUEUE)["vllm:num_requests_running"], 1, "A still runs")
        wait_idle(QUEUE)

    def test_metrics_names(self):
        text = httpx.get(URL + "/metrics").text
        for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                     "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                     "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total"]:
            self.assertIn(name + "{", text)
        self.assertIn(f'model_name="{MODEL}"', text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
