#!/usr/bin/env python3
"""Print the import cycles among the modules under src/.

Reads every `use crate::..`, `use super::..` and `use self::..` and every path written inline
(`crate::a::Item`, `super::Item`), and maps each to the module that defines what it names: a
module is one file (src/a/b.rs or src/a/b/mod.rs is `a::b`), and a name a folder's mod.rs
re-exports (`pub use self::b::Item`) is followed to the file that defines it. An edge a -> b
says that a uses something defined in b. A parent declaring or re-exporting its own children is
not an edge (it owns them); the items a mod.rs defines itself are.

Prints each strongly connected component of more than one module with the edges inside it, and
exits 1 if there is any. Standard library only.

    python3 scripts/cycles.py [--src DIR] [--edges]
"""

import argparse
import os
import re
import sys

USE = re.compile(r"\b(?:pub(?:\([a-z]+\))?\s+)?use\s+(crate|super|self)::([^;]+);", re.S)
PUB_USE = re.compile(r"\bpub(?:\([a-z]+\))?\s+use\s+(crate::|super::|self::)?([^;]+);", re.S)
INLINE = re.compile(r"(?<![:A-Za-z0-9_])(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def modules(src):
    """{module path tuple: file}"""
    found = {}
    for root, _dirs, files in os.walk(src):
        for file in files:
            if not file.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, file), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            found[tuple(rel)] = os.path.join(root, file)
    return found


def strip(text):
    """Drops comments and the contents of string literals."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand(tree):
    """`a::{b, c::{d as e}}` -> [[a, b], [a, c, d]]"""
    tree = re.sub(r"\s+", " ", tree).strip()
    out = []

    def walk(prefix, rest):
        rest = rest.strip()
        if not rest:
            return
        if rest.startswith("{"):
            depth, start = 0, 1
            for i, ch in enumerate(rest):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth == 0:
                        walk(prefix, rest[start:i])
                elif ch == "," and depth == 1:
                    walk(prefix, rest[start:i])
                    start = i + 1
            return
        head, sep, tail = rest.partition("::")
        head = head.strip()
        if sep:
            walk(prefix + [head], tail)
        else:
            out.append(prefix + [head.split(" as ")[0].strip()])

    walk([], tree)
    return out


def base_of(mods, here, base):
    if base == "crate":
        return ()
    if base == "self":
        return here
    return here[:-1]


class Crate:
    def __init__(self, src):
        self.mods = modules(src)
        self.text = {m: strip(open(f, encoding="utf-8").read()) for m, f in self.mods.items()}
        # {module: {item name: (base module, segments)}} for `pub use` re-exports.
        self.reexports = {m: {} for m in self.mods}
        for mod, text in self.text.items():
            for m in PUB_USE.finditer(text):
                start = base_of(self.mods, mod, (m.group(1) or "self::")[:-2])
                for segs in expand(m.group(2)):
                    self.reexports[mod][segs[-1]] = (start, segs)

    def resolve(self, start, segs, depth=0):
        """The module defining what `start::segs` names."""
        path = tuple(start)
        for i, seg in enumerate(segs):
            nxt = path + (seg,)
            if nxt in self.mods:
                path = nxt
                continue
            # `seg` is an item of `path`: defined there or re-exported from elsewhere.
            found = self.reexports.get(path, {}).get(seg)
            if found and depth < 10:
                return self.resolve(found[0], found[1], depth + 1)
            return path
        return path

    def edges(self):
        graph = {m: set() for m in self.mods}
        for mod, text in self.text.items():
            paths = []
            for m in USE.finditer(text):
                paths += [(m.group(1), segs) for segs in expand(m.group(2))]
            for m in INLINE.finditer(USE.sub("", text)):
                paths.append((m.group(1), [s for s in m.group(2).split("::") if s]))
            for base, segs in paths:
                if not segs or segs[-1] == "*":
                    continue  # a glob (`use super::*` in a test module) names nothing
                if segs[-1] == "self":
                    segs = segs[:-1]
                start = base_of(self.mods, mod, base)
                target = self.resolve(start, segs)
                if target == mod or target[: len(mod)] == mod:
                    continue  # itself, or a parent naming its children
                graph[mod].add(target)
        return graph


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) if mod else "crate"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--src", default=os.path.join(here, "..", "src"))
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args()
    graph = Crate(args.src).edges()
    if args.edges:
        for v in sorted(graph):
            for w in sorted(graph[v]):
                print(f"{name(v)} -> {name(w)}")
    cycles = [c for c in sccs(graph) if len(c) > 1]
    for comp in cycles:
        members = set(comp)
        print("cycle: " + ", ".join(sorted(name(m) for m in comp)))
        for v in sorted(comp):
            for w in sorted(graph[v] & members):
                print(f"    {name(v)} -> {name(w)}")
    print(f"{len(cycles)} cycle(s) among {len(graph)} modules")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
