"""A bounded load test of `retnet serve` on 127.0.0.1 with the `openai` client.

    python tools/serve/load_test.py [--backend cpu] [--clients 8] [--max-tokens 32]
                                    [--batch-sizes 1,2,4,8]

For each batch size B, a server with `--max-batch B` gets CLIENTS concurrent streaming
requests (distinct prompts; half greedy, half seeded sampling). Every request must be answered
in full (MAX_TOKENS tokens, finish reason `length`) with the very text it gets when it runs
alone. Prints a Markdown table of aggregate throughput against batch size (BENCHMARKS.md).
"""

import argparse
import concurrent.futures
import os
import platform
import subprocess
import sys
import time

import openai

from common import ROOT, Server

PROMPTS = ["ROMEO:", "JULIET:", "HAMLET:", "KING LEAR:", "OTHELLO:", "MACBETH:", "PORTIA:",
           "First Citizen:", "BRUTUS:", "CLEOPATRA:", "PROSPERO:", "FALSTAFF:"]


def request(i, max_tokens):
    seeded = i % 2 == 1
    return dict(prompt=PROMPTS[i % len(PROMPTS)] + "\n" * (i // len(PROMPTS)),
                max_tokens=max_tokens, temperature=0.8 if seeded else 0.0,
                seed=100 + i, extra_body={"top_k": 40})


def stream(client, params):
    start = time.perf_counter()
    text, first, tokens, finish = "", None, 0, None
    for chunk in client.completions.create(model="retnet-shakespeare", stream=True, **params):
        c = chunk.choices[0]
        if c.text and first is None:
            first = time.perf_counter() - start
        text += c.text
        finish = c.finish_reason or finish
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return text, tokens, finish, first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    args = parser.parse_args()
    requests = [request(i, args.max_tokens) for i in range(args.clients)]

    rows = []
    solo = None
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        with Server("--backend", args.backend, "--max-batch", str(b),
                    "--queue", str(args.clients), "--state-cache-mb", "0") as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused",
                                   max_retries=0, timeout=3600)
            if solo is None:
                solo = [stream(client, r)[0] for r in requests]
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda r: stream(client, r), requests))
            seconds = time.perf_counter() - start
        for i, (text, tokens, finish, _) in enumerate(results):
            if tokens != args.max_tokens or finish != "length":
                sys.exit(f"FAILED: request {i} under batch {b}: {tokens} tokens, {finish}")
            if text != solo[i]:
                sys.exit(f"FAILED: request {i} under batch {b}: {text!r} != solo {solo[i]!r}")
        total = args.clients * args.max_tokens
        ttft = sorted(r[3] for r in results)
        rows.append((b, total / seconds, ttft[len(ttft) // 2]))
        print(f"batch {b}: {args.clients} streams x {args.max_tokens} tokens in {seconds:.2f} s "
              f"= {total / seconds:.1f} tok/s; every output equals its solo run", flush=True)

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; backend {args.backend}; commit {commit or '?'}; "
          f"{args.clients} concurrent streaming clients x {args.max_tokens} tokens\n")
    print("| --max-batch | aggregate tok/s | median time to first token |")
    print("|---:|---:|---:|")
    for b, rate, ttft in rows:
        print(f"| {b} | {rate:.1f} | {ttft * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
