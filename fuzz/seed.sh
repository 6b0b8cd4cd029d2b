#!/bin/sh
# Builds the seed corpus of the `load` target from the checkpoints in tests/fixtures:
# each config.json, a NUL byte, then each of its safetensors files.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/load
for dir in ../tests/fixtures/*/; do
    name=$(basename "$dir")
    for st in "$dir"model*.safetensors; do
        out="corpus/load/seed-$name-$(basename "$st" .safetensors)"
        { cat "$dir/config.json"; printf '\000'; cat "$st"; } > "$out"
    done
done
ls corpus/load | wc -l
# The `state` and `tokens` targets: states the torchscale fixture saved, and token lists.
(cd .. && cargo test -p retnet --test hostile -- --ignored --exact write_fuzz_seeds)
ls corpus/state corpus/tokens | wc -l
