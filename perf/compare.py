#!/usr/bin/env python3
"""Compare two builds of ringfence-perf in one run, as ratios.

Runs each benchmark with `--json` on the *before* and *after* binaries alternately (so both
see the same machine load), several rounds, and prints per row the median throughput and
percentiles of each build and the after/before ratio. Figures only; nothing is asserted.

    cargo build --release -p ringfence-perf && cp target/release/ringfence-perf /tmp/after
    git worktree add /tmp/base <rev> && (cd /tmp/base && cargo build --release -p ringfence-perf)
    perf/compare.py --before /tmp/base/target/release/ringfence-perf --after /tmp/after \\
        --bench blp --bench pipeline --rounds 3 --quick

Beside each median ratio it prints the quartiles of the per-round ratios (with 4 rounds or
more): a row whose spread straddles 1.00x is not distinguishable from the baseline in that run.
It also prints in how many rounds the after build was ahead, and `p`: a two-sided permutation
test of the difference of the medians (the share of 2,000 random relabellings of the pooled
per-round throughputs whose medians differ at least as much; seeded, so a rerun on the same
figures prints the same `p`). A small `p` (under 0.05) says the ratio is not the machine's noise.

Rows can be filtered on either side with `--before-arg`/`--after-arg`, e.g. only the pipeline's
maximum-throughput rows of a build that has `pipeline --rate`:

    perf/compare.py ... --bench pipeline --quick --after-arg=--rate --after-arg=max

A row the builds name differently (a variant renamed, or the after build's variant that
matches what the before build measured) is compared with `--match AFTER_VARIANT=BEFORE_VARIANT`,
e.g. `--match ringfence_no_quotas=ringfence` against a build from before per-user quotas.
"""

import argparse
import json
import random
import statistics
import subprocess
import sys


def run(binary, bench, quick, extra):
    args = [binary, bench, "--json"] + (["--quick"] if quick else []) + extra
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            rows[(row["scenario"], row["variant"])] = row
    return rows


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def ratio(after, before):
    if after is None or not before:
        return "-"
    return f"{after / before:.2f}x"


def round_spread(samples, after_key, before_key):
    """The quartiles of the per-round throughput ratios: each round runs the two builds back
    to back, so its ratio is taken under one machine load; the spread says how far a median
    ratio can be trusted."""
    ratios = [after / before for before, after in throughputs(samples, after_key, before_key)]
    if len(ratios) < 4:
        return "-"
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{q1:.2f}-{q3:.2f}x"


def throughputs(samples, after_key, before_key):
    """The rounds' (before, after) throughputs of one row, for rounds that measured it in both."""
    pairs = []
    for before_rows, after_rows in zip(samples["before"], samples["after"]):
        before = before_rows.get(before_key, {}).get("ops_per_sec")
        after = after_rows.get(after_key, {}).get("ops_per_sec")
        if before and after is not None:
            pairs.append((before, after))
    return pairs


def significance(samples, after_key, before_key, shuffles=2000):
    """Rounds the after build was ahead, and the permutation test's p of the medians' difference."""
    pairs = throughputs(samples, after_key, before_key)
    if len(pairs) < 4:
        return "-"
    ahead = sum(after > before for before, after in pairs)
    before = [b for b, _ in pairs]
    after = [a for _, a in pairs]
    observed = abs(statistics.median(after) - statistics.median(before))
    pooled = before + after
    rng = random.Random(0)
    extreme = 0
    for _ in range(shuffles):
        rng.shuffle(pooled)
        left, right = pooled[:len(before)], pooled[len(before):]
        if abs(statistics.median(right) - statistics.median(left)) >= observed:
            extreme += 1
    return f"{ahead}/{len(pairs)} p={extreme / shuffles:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="baseline ringfence-perf binary")
    parser.add_argument("--after", required=True, help="ringfence-perf binary under test")
    parser.add_argument("--bench", action="append", required=True, help="e.g. blp, pipeline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--match", action="append", default=[], metavar="AFTER=BEFORE",
                        help="also compare the after build's variant AFTER with the before "
                             "build's variant BEFORE, in every scenario that has both")
    parser.add_argument("--before-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to the before build's benchmark (repeatable)")
    parser.add_argument("--after-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to the after build's benchmark (repeatable), e.g. "
                             "--after-arg=--rate --after-arg=max for a build whose `pipeline` "
                             "filters rows")
    args = parser.parse_args()
    matches = []
    for pair in args.match:
        after_variant, sep, before_variant = pair.partition("=")
        if not sep or not after_variant or not before_variant:
            parser.error(f"--match takes AFTER_VARIANT=BEFORE_VARIANT, not {pair!r}")
        matches.append((after_variant, before_variant))

    for bench in args.bench:
        samples = {"before": [], "after": []}
        for round_ in range(args.rounds):
            for build in ("before", "after"):
                binary = getattr(args, build)
                print(f"# {bench} round {round_ + 1}/{args.rounds}: {build}", file=sys.stderr)
                extra = getattr(args, f"{build}_arg")
                samples[build].append(run(binary, bench, args.quick, extra))
        keys = []
        for rows in samples["before"] + samples["after"]:
            for key in rows:
                if key not in keys:
                    keys.append(key)
        print(f"\n== {bench}: median of {args.rounds} alternating rounds; ratio = after / before")
        header = (f"{'scenario':<22} {'variant':<34} {'ops/s before':>13} {'after':>13} "
                  f"{'ratio':>7} {'rounds q1-q3':>13} {'ahead, p':>14} {'p50 before':>11} {'after':>9} "
                  f"{'p99 before':>11} {'after':>9}")
        print(header)
        pairs = [(key, key, key[1]) for key in keys]
        for after_variant, before_variant in matches:
            for scenario in dict.fromkeys(key[0] for key in keys):
                after_key, before_key = (scenario, after_variant), (scenario, before_variant)
                if after_key in keys and before_key in keys:
                    pairs.append((after_key, before_key, f"{after_variant}={before_variant}"))
        for after_key, before_key, label in pairs:
            def stat(build, field):
                key = after_key if build == "after" else before_key
                return median([rows.get(key, {}).get(field) for rows in samples[build]])

            before_ops, after_ops = stat("before", "ops_per_sec"), stat("after", "ops_per_sec")
            print(f"{after_key[0]:<22} {label[:34]:<34} "
                  f"{(before_ops or 0):>13,.0f} {(after_ops or 0):>13,.0f} "
                  f"{ratio(after_ops, before_ops):>7} "
                  f"{round_spread(samples, after_key, before_key):>13} "
                  f"{significance(samples, after_key, before_key):>14} "
                  f"{fmt_ns(stat('before', 'p50_ns')):>11} {fmt_ns(stat('after', 'p50_ns')):>9} "
                  f"{fmt_ns(stat('before', 'p99_ns')):>11} {fmt_ns(stat('after', 'p99_ns')):>9}")


if __name__ == "__main__":
    main()
