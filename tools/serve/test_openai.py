"""`retnet serve` with the official `openai` Python client.

    python tools/serve/test_openai.py [--backend cpu|gpu]

Checks, all exact (no timed assertion): the server runs the engine asked for; concurrent
streaming completions, a plain completion and a chat reply equal `retnet generate
--temperature 0` on the same engine byte for byte, with exact usage counts, and a seeded sampled
completion equals `retnet generate --seed` with the same parameters; bad requests get a
400 (an unknown model a 404) and leave the server serving; a dropped stream is counted as a
disconnect, frees its slot and leaves the server healthy; a prompt that extends an earlier one
resumes from the cached prefix state (one more cache hit, `cached_tokens` = the cached prefix,
only the rest of the prompt prefilled) and still equals the uncached output. The two times to
first token are printed for the record, not compared. Exits non-zero on the first failure. CI
runs it on both engines (`.ci/run`).
"""

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.error
import urllib.request

import openai

from common import Server, generate

MODEL = "retnet-shakespeare"
PIECE = 256  # PREFILL_PIECE: prefix states are cached at multiples of it
SPEECH = (
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"
)


class Failure(Exception):
    pass


def check(condition, message):
    """An assertion that `python -O` keeps."""
    if not condition:
        raise Failure(message)


def same(got, want, what):
    """`got` (text from the server) is `want` (bytes from `retnet generate`) byte for byte."""
    check(got.encode("utf-8") == want, f"{what}: server {got!r} != generate {want!r}")


def stream_text(client, prompt, max_tokens, **extra):
    """Streams a greedy completion; returns (text, seconds to the first text, finish reason,
    usage of the last chunk)."""
    start = time.perf_counter()
    first = None
    text = ""
    finish = None
    usage = None
    for chunk in client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True, **extra,
    ):
        choice = chunk.choices[0]
        if choice.text and first is None:
            first = time.perf_counter() - start
        text += choice.text
        finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    check(usage is not None, f"{prompt[:20]!r}: no usage in the stream")
    return text, first, finish, usage


def wait_for(server, name, value, seconds=120):
    """Polls `/metrics` until `name` reads `value` (a bounded wait, not a timed check)."""
    deadline = time.monotonic() + seconds
    while server.metric(name) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.metric(name)


def post_raw(server, path, body):
    """POSTs raw bytes as JSON; returns (status, parsed body)."""
    req = urllib.request.Request(server.url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def run(backend):
    small = backend == "gpu"  # lavapipe is slow: fewer tokens there
    n = 6 if small else 24

    with Server("--backend", backend, "--max-batch", "4") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                               timeout=600)
        models = [m.id for m in client.models.list()]
        check(models == [MODEL], f"models {models}")
        engine = server.metrics().get(f'backend_info{{backend="{backend}"}}')
        check(engine == 1, f"the server does not run the {backend} engine")
        print(f"ok: the server runs the {backend} engine and lists {MODEL}")

        # Concurrent streaming completions equal the CLI's output.
        prompts = ["ROMEO:\n", "JULIET:\nO", "To be, or not", "KING HENRY:"]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: stream_text(client, p, n), prompts))
        for prompt, (text, _, finish, usage) in zip(prompts, results):
            same(text, generate(prompt, n, backend), repr(prompt))
            check(finish == "length", f"{prompt!r}: finish {finish}")
            check((usage.prompt_tokens, usage.completion_tokens) == (len(prompt.encode()), n),
                  f"{prompt!r}: usage {usage}")
        print(f"ok: {len(prompts)} concurrent streams equal `retnet generate`")

        # Non-streamed, with usage; chat over the documented template, cut at "\nUser:".
        c = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=n,
                                      temperature=0)
        check(c.choices[0].text == results[0][0], f"non-streamed {c.choices[0].text!r}")
        k = len(prompts[0].encode())
        check((c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens)
              == (k, n, k + n), f"usage {c.usage}")
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Speak."}], max_tokens=n,
            temperature=0)
        want = generate("User: Speak.\nAssistant:", n, backend)
        cut = want.find(b"\nUser:")
        want, reason = (want, "length") if cut < 0 else (want[:cut], "stop")
        reply = chat.choices[0]
        check(reply.message.role == "assistant", f"chat role {reply.message.role}")
        same(reply.message.content, want, "chat")
        check(reply.finish_reason == reason, f"chat finish {reply.finish_reason}")
        # A seeded sampled completion is `retnet generate --seed` (the server's defaults are
        # OpenAI's, top_k 0 and top_p 1, so the CLI's are given explicitly).
        c = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=n,
                                      temperature=0.8, top_p=0.95, seed=7,
                                      extra_body={"top_k": 40})
        want = generate(prompts[1], n, backend, "--temperature", "0.8", "--top-p", "0.95",
                        "--top-k", "40", "--seed", "7")
        same(c.choices[0].text, want, "seeded")
        print("ok: completion usage, chat and a seeded completion equal `retnet generate`")

        # Bad requests get a 400 (an unknown model a 404), and the server goes on serving.
        errors = server.metric("request_errors_total")
        for bad in [dict(max_tokens=-1), dict(top_p=1.5), dict(temperature=-2)]:
            try:
                client.completions.create(model=MODEL, prompt="x", **bad)
                raise Failure(f"{bad} accepted")
            except openai.BadRequestError as e:
                check(e.status_code == 400 and e.body["message"], f"{bad}: {e}")
        status, body = post_raw(server, "/v1/completions", b'{"prompt": "x", ')
        check(status == 400 and body["error"]["message"], f"a body that is not JSON: {status}")
        try:
            client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
            raise Failure("unknown model accepted")
        except openai.NotFoundError:
            pass
        check(server.metric("request_errors_total") == errors + 5, "errors not counted")
        check(server.proc.poll() is None, "the server exited")
        print("ok: bad requests get 400, an unknown model 404")

        # A dropped stream leaves the server healthy, counts a disconnect and frees its slot.
        disconnects = server.metric("client_disconnects_total")
        stream = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=100000,
                                           temperature=0, stream=True)
        next(iter(stream))
        stream.close()
        check(wait_for(server, "batch_occupancy", 0) == 0, "the dropped stream kept its slot")
        check(server.metric("client_disconnects_total") == disconnects + 1,
              "the dropped stream was not counted as a disconnect")
        check(server.metric("queue_length") == 0, "a request is left in the queue")
        check(server.get("/health") == (200, '{"status":"ok"}'), "unhealthy after a drop")
        text, _, _, _ = stream_text(client, prompts[0], n)
        check(text == results[0][0], f"after the drop: {text!r}")
        print("ok: a dropped stream freed its slot; the server is healthy")

        # A prompt extending an earlier one resumes from its cached prefix state: one more
        # cache hit, the cached tokens not prefilled again, the output still the uncached one.
        pieces = 2
        base = ("HAMLET:\n" + SPEECH * 100)[: pieces * PIECE + 20]
        extended = base + "\nHORATIO:"
        before = server.metrics()
        text, cold, _, usage = stream_text(client, base, 2)
        same(text, generate(base, 2, backend), "base prompt")
        check(usage.prompt_tokens_details.cached_tokens == 0, f"base prompt: {usage}")
        middle = server.metrics()
        check(middle["prefix_cache_misses_total"] == before["prefix_cache_misses_total"] + 1,
              "the base prompt was not a cache miss")
        check(middle["prefix_cache_entries"] >= before["prefix_cache_entries"] + pieces,
              "the base prompt's piece states were not cached")
        text, warm, _, usage = stream_text(client, extended, 2)
        after = server.metrics()
        same(text, generate(extended, 2, backend), "extended prompt")
        cached = usage.prompt_tokens_details.cached_tokens
        check(cached == pieces * PIECE, f"extended prompt: {cached} cached tokens")
        check(after["prefix_cache_hits_total"] == middle["prefix_cache_hits_total"] + 1,
              "the extended prompt was not a cache hit")
        check(after["prefix_cache_hit_tokens_total"]
              == middle["prefix_cache_hit_tokens_total"] + pieces * PIECE, "cache hit tokens")
        fed = after["prefill_tokens_total"] - middle["prefill_tokens_total"]
        check(fed == len(extended.encode()) - pieces * PIECE, f"extended prompt: {fed} fed")
        print(f"ok: the extended prompt resumed {cached} cached tokens and prefilled only "
              f"{fed:.0f}; time to first token (for the record, not checked): "
              f"{cold * 1000:.0f} ms cold, {warm * 1000:.0f} ms extended")

        check(server.proc.poll() is None, "the server exited")
        check(server.metric("batch_occupancy") == 0, "slots left occupied")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()
    try:
        run(args.backend)
    except Failure as e:
        print(f"FAILED ({args.backend}): {e}", file=sys.stderr)
        sys.exit(1)
    print(f"all checks passed ({args.backend})")


if __name__ == "__main__":
    main()
