#!/usr/bin/env python3
"""Summarise `cargo bench --bench overhead` results as Markdown tables.

Reads criterion's on-disk results, one directory per benchmark:

    <criterion dir>/<group>/<variant>/new/estimates.json   (times in ns)
    <criterion dir>/<group>/<variant>/new/benchmark.json   (group_id, function_id)

and prints

1. a table of median time per call (ns): rows = variants, columns = groups;
2. a table of comparisons: tanker_bulkhead / tower_limit, tanker_breaker - raw,
   resilience_stack / tanker_stack, per group where they apply;
3. the rejection medians, cheapest first;
4. the rejections with a tracing subscriber at INFO (`<variant>_logged`) next
   to the same variant with none, their ratio and the ns added;
5. with `--features metrics`, the cost of tanker's metrics: each variant of the
   `metrics_*` groups without a recorder (`<variant>/no_recorder`) and with a
   Prometheus one (`<variant>/prometheus`), their ratio and the ns added;
6. the keyed groups (`keyed_ready_call`, `keyed_oneshot`, `keyed_two_tasks`): the
   keyed layer on one key and spread over 64 keys next to the unkeyed stack and
   the raw service, and what a key costs over the unkeyed stack (ratio and ns).

The criterion directory is, in order of preference: --dir, $CRITERION_HOME,
$CARGO_TARGET_DIR/criterion, <repository root>/target/criterion (the same
order criterion itself uses, minus `cargo metadata`).

Standard library only.
"""

import argparse
import json
import math
import os
import sys

GROUPS = ["ready_call", "oneshot", "two_tasks", "rejection"]
VARIANTS = [
    "raw",
    "tanker_bulkhead",
    "tanker_bulkhead_logged",
    "tanker_breaker",
    "tanker_breaker_logged",
    "tanker_breaker_tripped",
    "recloser",
    "recloser_tripped",
    "tanker_stack",
    "tower_limit",
    "tower_limit_logged",
    "resilience_bulkhead",
    "resilience_breaker",
    "resilience_breaker_tripped",
    "resilience_stack",
]
LOGGED = "_logged"
METRICS_GROUPS = ["metrics_ready_call", "metrics_two_tasks"]
METRICS_VARIANTS = ["tanker_bulkhead", "tanker_breaker", "tanker_stack"]
WITHOUT, WITH = "no_recorder", "prometheus"
KEYED_PREFIX = "keyed_"
KEYED_GROUPS = ["keyed_ready_call", "keyed_oneshot", "keyed_two_tasks"]
KEYED_VARIANTS = ["raw", "tanker_stack", "keyed_one_key", "keyed_64_keys"]
KEYED_BASE = "tanker_stack"
GROUP_TITLES = {
    "ready_call": "ready_call (ns)",
    "oneshot": "oneshot (ns)",
    "two_tasks": "two_tasks (ns/call/core)",
    "rejection": "rejection (ns)",
}


def default_dir():
    if os.environ.get("CRITERION_HOME"):
        return os.environ["CRITERION_HOME"]
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "criterion")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, "target", "criterion")


def load(criterion_dir, statistic):
    """Returns {(group, variant): point estimate in ns}."""
    results = {}
    for root, _dirs, files in os.walk(criterion_dir):
        if os.path.basename(root) != "new" or "estimates.json" not in files:
            continue
        bench_dir = os.path.dirname(root)
        rel = os.path.relpath(bench_dir, criterion_dir).split(os.sep)
        group, variant = rel[0], "/".join(rel[1:])
        meta_path = os.path.join(root, "benchmark.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            group = meta.get("group_id") or group
            function = meta.get("function_id")
            value = meta.get("value_str")
            if function is not None:
                variant = function if value is None else f"{function}/{value}"
            elif value is not None:
                variant = value
        if not variant:
            continue  # a lone bench_function outside any group
        with open(os.path.join(root, "estimates.json")) as f:
            estimates = json.load(f)
        stat = estimates.get(statistic)
        if stat is None:
            continue
        results[(group, variant)] = float(stat["point_estimate"])
    return results


def ordered(found, preferred):
    return [x for x in preferred if x in found] + sorted(found - set(preferred))


def fmt_ns(v):
    if v is None or math.isnan(v):
        return "–"
    if v >= 100_000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def fmt_ratio(v):
    if v is None:
        return "–"
    if 0 < v < 0.1:
        return f"1/{1 / v:,.0f}"  # e.g. 1/23,000 rather than 0.00×
    return f"{v:.2f}×"


def fmt_delta(v):
    return "–" if v is None else f"{v:+.1f} ns"


def ratio(results, group, num, den):
    a, b = results.get((group, num)), results.get((group, den))
    if a is None or b is None or b == 0:
        return None
    return a / b


def delta(results, group, a, b):
    x, y = results.get((group, a)), results.get((group, b))
    if x is None or y is None:
        return None
    return x - y


def table(header, rows, left=1):
    """A Markdown table; the first `left` columns are left-aligned, the rest right-aligned."""
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|")
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="criterion output directory")
    parser.add_argument(
        "--statistic",
        default="median",
        choices=["median", "mean", "slope"],
        help="which criterion estimate to report (default: median)",
    )
    args = parser.parse_args()

    criterion_dir = args.dir or default_dir()
    if not os.path.isdir(criterion_dir):
        sys.exit(f"no criterion results at {criterion_dir}; run `cargo bench --bench overhead` first")
    results = load(criterion_dir, args.statistic)
    if not results:
        sys.exit(f"no */new/estimates.json under {criterion_dir}")

    stat = args.statistic
    print(f"Criterion {stat} per call, from `{criterion_dir}`.\n")
    metrics = {k: v for k, v in results.items() if k[0].startswith("metrics_")}
    keyed = {k: v for k, v in results.items() if k[0].startswith(KEYED_PREFIX)}
    results = {k: v for k, v in results.items() if k not in metrics and k not in keyed}
    if results:
        print_overhead(results, stat)
    if metrics:
        print_metrics(metrics, stat)
    if keyed:
        print_keyed(keyed, stat)


def print_overhead(results, stat):
    groups = ordered({g for g, _ in results}, GROUPS)
    variants = ordered({v for _, v in results}, VARIANTS)

    # 1. Medians.
    header = ["variant"] + [GROUP_TITLES.get(g, f"{g} (ns)") for g in groups]
    rows = [[f"`{v}`"] + [fmt_ns(results.get((g, v))) for g in groups] for v in variants]
    print(f"### {stat.capitalize()} time per call\n")
    print(table(header, rows))
    print()

    # 2. Comparisons.
    comparisons = [
        ("tanker_bulkhead / tower_limit", ["ready_call", "two_tasks", "rejection"],
         lambda g: fmt_ratio(ratio(results, g, "tanker_bulkhead", "tower_limit"))),
        ("tanker_bulkhead / resilience_bulkhead", ["ready_call", "oneshot", "two_tasks", "rejection"],
         lambda g: fmt_ratio(ratio(results, g, "tanker_bulkhead", "resilience_bulkhead"))),
        ("tanker_bulkhead − raw", ["ready_call", "oneshot", "two_tasks"],
         lambda g: fmt_delta(delta(results, g, "tanker_bulkhead", "raw"))),
        ("tanker_breaker − raw", ["ready_call", "oneshot", "two_tasks"],
         lambda g: fmt_delta(delta(results, g, "tanker_breaker", "raw"))),
        ("tanker_breaker / recloser", ["ready_call", "oneshot", "two_tasks"],
         lambda g: fmt_ratio(ratio(results, g, "tanker_breaker", "recloser"))),
        ("resilience_breaker / tanker_breaker", ["ready_call", "oneshot", "two_tasks", "rejection"],
         lambda g: fmt_ratio(ratio(results, g, "resilience_breaker", "tanker_breaker"))),
        ("resilience_stack / tanker_stack", ["ready_call", "oneshot", "two_tasks"],
         lambda g: fmt_ratio(ratio(results, g, "resilience_stack", "tanker_stack"))),
    ]
    cmp_groups = [g for g in GROUPS if g in groups]
    rows = []
    for label, applies, cell in comparisons:
        rows.append([label] + [cell(g) if g in applies else "" for g in cmp_groups])
    print("### Comparisons\n")
    print(table(["comparison"] + cmp_groups, rows))
    print()

    # 3. Rejections, cheapest first.
    rejection = [(v, results[("rejection", v)]) for v in variants if ("rejection", v) in results]
    if rejection:
        rejection.sort(key=lambda item: item[1])
        print(f"### Rejection ({stat}, ns per rejected ready+call)\n")
        print(table(["variant", "ns"], [[f"`{v}`", fmt_ns(t)] for v, t in rejection]))
        print()

    # 4. Rejections with a subscriber, next to the same variant without.
    logged = [v for v in variants if v.endswith(LOGGED) and ("rejection", v) in results]
    if logged:
        rows = []
        for v in logged:
            base = v.removesuffix(LOGGED)
            rows.append([
                f"`{base}`",
                fmt_ns(results.get(("rejection", base))),
                fmt_ns(results[("rejection", v)]),
                fmt_ratio(ratio(results, "rejection", v, base)),
                fmt_delta(delta(results, "rejection", v, base)),
            ])
        print(f"### Rejection with a tracing subscriber at INFO, output discarded ({stat} ns)\n")
        print(table(["variant", "no subscriber", "INFO subscriber", "ratio", "added"], rows))
        print()


def print_metrics(results, stat):
    """The metrics groups: each variant without and with a recorder, side by side."""
    groups = ordered({g for g, _ in results}, METRICS_GROUPS)
    variants = ordered({v.rsplit("/", 1)[0] for _, v in results}, METRICS_VARIANTS)
    rows = []
    for g in groups:
        for v in variants:
            without, with_ = f"{v}/{WITHOUT}", f"{v}/{WITH}"
            if (g, without) not in results and (g, with_) not in results:
                continue
            rows.append([
                g.removeprefix("metrics_"),
                f"`{v}`",
                fmt_ns(results.get((g, without))),
                fmt_ns(results.get((g, with_))),
                fmt_ratio(ratio(results, g, with_, without)),
                fmt_delta(delta(results, g, with_, without)),
            ])
    print(f"### Metrics: {stat} ns per call, no recorder vs Prometheus recorder\n")
    print(table(["group", "variant", WITHOUT, WITH, "ratio", "added"], rows, left=2))

    print()


def print_keyed(results, stat):
    """The keyed groups: each variant per group, then each keyed variant against the stack."""
    groups = ordered({g for g, _ in results}, KEYED_GROUPS)
    variants = ordered({v for _, v in results}, KEYED_VARIANTS)
    title = lambda g: GROUP_TITLES.get(g.removeprefix(KEYED_PREFIX), f"{g} (ns)")
    rows = [[f"`{v}`"] + [fmt_ns(results.get((g, v))) for g in groups] for v in variants]
    print(f"### Keyed: {stat} time per call, one key and 64 keys next to the unkeyed stack\n")
    print(table(["variant"] + [title(g) for g in groups], rows))
    print()
    keyed = [v for v in variants if v.startswith(KEYED_PREFIX)]
    rows = []
    for v in keyed:
        rows.append([f"{v} / {KEYED_BASE}"] + [fmt_ratio(ratio(results, g, v, KEYED_BASE)) for g in groups])
        rows.append([f"{v} − {KEYED_BASE}"] + [fmt_delta(delta(results, g, v, KEYED_BASE)) for g in groups])
    if rows:
        print("### Keyed: what a key costs over the unkeyed stack\n")
        print(table(["comparison"] + [g.removeprefix(KEYED_PREFIX) for g in groups], rows))


if __name__ == "__main__":
    main()
