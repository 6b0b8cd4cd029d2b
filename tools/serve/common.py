"""Starting `retnet serve` on a free port of 127.0.0.1, and running `retnet generate`."""

import os
import subprocess
import threading
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def retnet_binary():
    """The `retnet` binary: $RETNET_BIN, else the debug build of this checkout."""
    return os.environ.get("RETNET_BIN", os.path.join(ROOT, "target", "debug", "retnet"))


class Server:
    """`retnet serve ARGS --port 0` as a context manager; `.url` is its base URL."""

    def __init__(self, *args):
        self.args = list(args)

    def __enter__(self):
        self.proc = subprocess.Popen(
            [retnet_binary(), "serve", "--port", "0", *self.args],
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            if line.startswith("listening on "):
                self.url = line.split()[2]
                break
        else:
            raise RuntimeError("retnet serve exited before listening")
        # Keep reading stderr so that the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return r.status, r.read().decode()

    def metrics(self):
        """`/metrics` as {name: value}, names without `retnet_`, labels kept (`backend_info{…}`)."""
        _, text = self.get("/metrics")
        values = {}
        for line in text.splitlines():
            if line.startswith("retnet_"):
                name, value = line.rsplit(" ", 1)
                values[name.removeprefix("retnet_")] = float(value)
        return values

    def metric(self, name):
        return self.metrics()[name]


def generate(prompt, max_tokens, backend="cpu", *sampling):
    """The bytes `retnet generate --temperature 0` (or with the SAMPLING options instead)
    prints for this prompt."""
    sampling = list(sampling) or ["--temperature", "0"]
    out = subprocess.run(
        [retnet_binary(), "generate", "--backend", backend, *sampling,
         "--prompt", prompt, "--max-tokens", str(max_tokens)],
        capture_output=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"retnet generate failed ({out.returncode}): {out.stderr.decode()}")
    return out.stdout
