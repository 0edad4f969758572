#!/usr/bin/env python3
"""Imports flow one way: fails when a crate's modules import each other in a circle.

    python3 .ci/layers.py server/src protocol-api/src

For each `src` folder: every file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`); an
edge is a `crate::`, `super::` or `self::` path in its code (comments and `mod tests`
left out, `{a, b}` lists expanded) to another module of the crate. A circle among the
files fails, and so does one among the top-level modules (a folder counts as one: the
layers of server/src are folders, and they must stack). Prints each circle found.
"""
import os
import re
import sys


def modules(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split("/")
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found["::".join(parts)] = path
    return found


def paths_in(text):
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    listed = r"\b((?:crate|super|self)(?:::\w+)*)::\{([^{}]*)\}"
    for match in re.finditer(listed, text):
        for item in match.group(2).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item:
                yield match.group(1) + ("" if item == "self" else "::" + item)
    text = re.sub(listed, "", text)
    for match in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        yield match.group(1)


def resolve(known, here, path):
    segments = path.split("::")
    here = here.split("::") if here else []
    if segments[0] == "crate":
        base = []
    elif segments[0] == "self":
        base = here
    else:  # super, possibly repeated
        base = here[:-1]
        while len(segments) > 1 and segments[1] == "super":
            base = base[:-1]
            segments = segments[1:]
    segments = segments[1:]
    for end in range(len(segments), -1, -1):
        candidate = "::".join(base + segments[:end])
        if candidate in known:
            return candidate
    return None


def circles(edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def check(root):
    known = modules(root)
    edges = {m: set() for m in known}
    for module, path in known.items():
        with open(path, encoding="utf-8") as f:
            for used in paths_in(f.read()):
                target = resolve(known, module, used)
                # An import of the module itself or of one inside it is no edge.
                if target is None or target == module or target.startswith(module + "::"):
                    continue
                if module and target == "":
                    continue
                edges[module].add(target)
    top = {}
    for module, targets in edges.items():
        here = module.split("::")[0]
        top.setdefault(here, set()).update(
            t.split("::")[0] for t in targets if t.split("::")[0] != here
        )
    failed = False
    for kind, graph in (("modules", edges), ("top-level modules", top)):
        for circle in circles(graph):
            failed = True
            print(f"{root}: {kind} import each other in a circle: {', '.join(circle)}")
    return not failed


if __name__ == "__main__":
    roots = sys.argv[1:] or ["server/src", "protocol-api/src"]
    results = [check(root) for root in roots]
    if all(results):
        print(f"no import circles in {', '.join(roots)}")
    sys.exit(0 if all(results) else 1)
