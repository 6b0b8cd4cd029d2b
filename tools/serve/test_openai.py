"""`retnet serve` with the official `openai` Python client.

    python tools/serve/test_openai.py [--backend cpu|gpu]

Checks: concurrent streaming completions equal `retnet generate --temperature 0`; a bad
request gets a 400; a dropped stream leaves the server healthy (and its slot freed); a prompt
that extends an earlier one resumes from the cached prefix state and starts sooner (time to
first token). Exits non-zero on the first failure. CI runs it (`.ci/run`).
"""

import argparse
import concurrent.futures
import time

import openai

from common import Server, generate

SPEECH = (
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"
)


def stream_text(client, prompt, max_tokens, **extra):
    """Streams a completion; returns (text, seconds to the first text, finish reason)."""
    start = time.perf_counter()
    first = None
    text = ""
    finish = None
    for chunk in client.completions.create(
        model="retnet-shakespeare", prompt=prompt, max_tokens=max_tokens, temperature=0,
        stream=True, **extra,
    ):
        choice = chunk.choices[0]
        if choice.text and first is None:
            first = time.perf_counter() - start
        text += choice.text
        finish = choice.finish_reason or finish
    return text, first, finish


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()
    small = args.backend == "gpu"  # lavapipe is slow: fewer tokens there

    with Server("--backend", args.backend, "--max-batch", "4") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["retnet-shakespeare"]

        # Concurrent streaming completions equal the CLI's output.
        n = 6 if small else 24
        prompts = ["ROMEO:", "JULIET:\nO", "To be, or not", "KING HENRY:"]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: stream_text(client, p, n), prompts))
        for prompt, (text, _, finish) in zip(prompts, results):
            want = generate(prompt, n, args.backend)
            assert text == want, f"{prompt!r}: server {text!r} != generate {want!r}"
            assert finish == "length", finish
        print(f"ok: {len(prompts)} concurrent streams equal `retnet generate`")

        # Non-streamed, with usage.
        c = client.completions.create(model="retnet-shakespeare", prompt="ROMEO:", max_tokens=n,
                                      temperature=0)
        assert c.choices[0].text == results[0][0]
        assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (6, n), c.usage
        chat = client.chat.completions.create(
            model="retnet-shakespeare", messages=[{"role": "user", "content": "Speak."}],
            max_tokens=n, temperature=0)
        assert chat.choices[0].message.role == "assistant"
        print("ok: completion usage and chat")

        # A bad request gets a 400 (and an unknown model a 404).
        for bad in [dict(max_tokens=-1), dict(top_p=1.5), dict(temperature=-2)]:
            try:
                client.completions.create(model="retnet-shakespeare", prompt="x", **bad)
                raise AssertionError(f"{bad} accepted")
            except openai.BadRequestError as e:
                assert e.status_code == 400 and e.body["message"], e
        try:
            client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError:
            pass
        print("ok: bad requests get 400, an unknown model 404")

        # A dropped stream leaves the server healthy and frees its slot.
        stream = client.completions.create(model="retnet-shakespeare", prompt="ROMEO:",
                                           max_tokens=100000, stream=True)
        next(iter(stream))
        stream.close()
        for _ in range(600):
            if server.metric("batch_occupancy") == 0:
                break
            time.sleep(0.1)
        assert server.metric("batch_occupancy") == 0, "the dropped stream kept its slot"
        assert server.get("/health")[0] == 200
        text, _, _ = stream_text(client, "ROMEO:", n)
        assert text == results[0][0]
        print("ok: a dropped stream freed its slot; the server is healthy")

        # A prompt extending an earlier one resumes from its cached prefix: sooner first token.
        pieces = 2
        base = ("HAMLET:\n" + SPEECH * 100)[: pieces * 256 + 20]
        _, cold, _ = stream_text(client, base, 2)
        extended = base + "\nHORATIO:"
        hits = server.metric("prefix_cache_hits_total")
        _, warm, _ = stream_text(client, extended, 2)
        assert server.metric("prefix_cache_hits_total") == hits + 1
        c = client.completions.create(model="retnet-shakespeare", prompt=extended, max_tokens=2,
                                      temperature=0)
        cached = c.usage.prompt_tokens_details.cached_tokens
        assert cached == pieces * 256, cached
        assert c.choices[0].text == generate(extended, 2, args.backend)
        print(f"ok: extended prompt resumed {cached} cached tokens; time to first token "
              f"{cold * 1000:.0f} ms cold, {warm * 1000:.0f} ms extended")
        assert warm < cold, f"extended prompt not sooner: {warm:.3f}s vs {cold:.3f}s"


if __name__ == "__main__":
    main()
