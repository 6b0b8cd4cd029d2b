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
