#!/usr/bin/env python3
"""Writes one token file per reference case for llama-oracle: line 1 the prompt ids, line 2
llama.cpp's greedy ids. Usage: tokens.py KEY OUTDIR (KEY as in ../shared/reference)."""
import json, os, sys

key, out = sys.argv[1], sys.argv[2]
shared = os.environ.get("FERRITE_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
ref = json.load(open(os.path.join(shared, "reference", f"{key}.json")))
os.makedirs(out, exist_ok=True)
for case in ref["cases"]:
    with open(os.path.join(out, f"{key}.{case['name']}.tok"), "w") as f:
        f.write(" ".join(map(str, case["prompt_tokens"])) + "\n")
        f.write(" ".join(map(str, case["greedy_tokens"])) + "\n")
    print(os.path.join(out, f"{key}.{case['name']}.tok"))
