#!/usr/bin/env python3
"""Checks that Cargo.toml's rust-version covers what the library's dependencies need.

Reads `cargo metadata` (all features, this platform) and walks the normal and build
dependencies of tanker, as Cargo.lock resolves them: a user who builds the library needs the
newest rust-version among them. Dev-dependencies (tests, examples, benchmarks) are reported,
not enforced: they only concern this repository's own builds.
"""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


def main():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked",
         "--filter-platform", "x86_64-unknown-linux-gnu"],
        check=True, capture_output=True, text=True).stdout
    meta = json.loads(out)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p for p in meta["packages"] if p["name"] == "tanker")
    declared = version(root["rust_version"])

    def reach(kinds_allowed, start_kinds):
        seen, stack = set(), []
        for dep in nodes[root["id"]]["deps"]:
            if any(k["kind"] in start_kinds for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
        while stack:
            pkg = stack.pop()
            if pkg in seen:
                continue
            seen.add(pkg)
            for dep in nodes[pkg]["deps"]:
                if any(k["kind"] in kinds_allowed for k in dep["dep_kinds"]):
                    stack.append(dep["pkg"])
        return seen

    def newest(ids):
        found = [(version(packages[i]["rust_version"]), packages[i]["name"], packages[i]["version"])
                 for i in ids if packages[i].get("rust_version")]
        return max(found) if found else None

    library = reach({None, "build"}, {None, "build"})
    everything = reach({None, "build"}, {None, "build", "dev"})
    need = newest(library)
    dev = newest(everything)
    print(f"rust-version declared {'.'.join(map(str, declared))}; "
          f"the library needs {'.'.join(map(str, need[0]))} ({need[1]} {need[2]}); "
          f"tests and examples need {'.'.join(map(str, dev[0]))} ({dev[1]} {dev[2]})")
    if need[0] > declared:
        print("error: raise rust-version in Cargo.toml (or pin that dependency lower)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
