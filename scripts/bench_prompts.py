#!/usr/bin/env python
"""Prompt resolution benchmark: accuracy on tests/data/prompts.yaml and per-prompt latency.

Usage: python scripts/bench_prompts.py [--prompts tests/data/prompts.yaml]

Prints accuracy, then median/95th-percentile latency for (a) a cached prompt, (b) a new prompt the
vocabulary answers, (c) a new prompt that needs the MiniLM encoder (text-embedding match).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from textseg.prompts import PromptResolver, check_prompt_case  # noqa: E402

ENCODER_PROMPTS = ["bile bladder", "heart muscle", "urinary bladder wall", "splenic tissue", "aortic vessel", "pancreatic tissue"]


def _times_ms(fn, prompts, repeat=1):
    out = []
    for _ in range(repeat):
        for prompt in prompts:
            start = time.perf_counter()
            fn(prompt)
            out.append((time.perf_counter() - start) * 1000)
    return out


def _summary(name, times, goal):
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    ok = "meets" if p95 <= goal else "MISSES"
    print(f"{name:42s} median {statistics.median(times):7.2f} ms   p95 {p95:7.2f} ms   goal <= {goal} ms: {ok}")
    return p95 <= goal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "prompts.yaml"))
    args = parser.parse_args()
    cases = yaml.safe_load(Path(args.prompts).read_text(encoding="utf-8"))["prompts"]

    resolver = PromptResolver()
    resolver.resolve("liver")  # load the vocabulary once
    failures = []
    for case in cases:
        passed, got = check_prompt_case(case, resolver)
        if not passed:
            failures.append((case["prompt"], got))
    accuracy = 1 - len(failures) / len(cases)
    print(f"resolution accuracy: {accuracy:.1%} ({len(cases) - len(failures)}/{len(cases)} prompts), goal >= 97%")
    for prompt, got in failures:
        print(f"  FAIL {prompt!r}: {got}")

    vocabulary_prompts = [c["prompt"] for c in cases if "structures" in c and "queries" not in c][:100]
    cached = _times_ms(resolver.resolve, vocabulary_prompts, repeat=3)  # every prompt was resolved above
    fresh = _times_ms(lambda p: PromptResolver(encoder=None).resolve(p), vocabulary_prompts[:50])
    warm = PromptResolver()
    warm.resolve("cardiac muscle tissue")  # loads the encoder and the embedding table once
    encoder = _times_ms(warm.resolve, ENCODER_PROMPTS)  # prompts this resolver has not seen
    ok = [accuracy >= 0.97]
    ok.append(_summary("cached prompt", cached, 20))
    ok.append(_summary("new prompt, vocabulary match", fresh, 20))
    ok.append(_summary("new prompt, MiniLM embedding match", encoder, 100))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
