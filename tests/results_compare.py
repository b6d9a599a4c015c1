"""One results.json schema for every runtime: compare two runs' files key by key, and every value
that does not measure time (the same seeds give the same numbers in-process, over gRPC and in Flower)."""

from __future__ import annotations

from typing import Any

# what only one runtime has (its transport's own facts), and what measures time rather than results
RUNTIME_ONLY = {"transport", "wire", "flower", "round_wall_seconds"}
TIMING = {"wall_seconds", "timings", "seconds", "counterfactual_seconds", "per_second"}


def keys(tree: Any, path: str = "") -> set[str]:
    """Every key path in a JSON tree (list items share their path)."""
    out: set[str] = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            if path == "" and k in RUNTIME_ONLY:
                continue
            out |= {f"{path}/{k}"} | keys(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for item in tree:
            out |= keys(item, f"{path}[]")
    return out


def without_timing(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: without_timing(v) for k, v in tree.items() if k not in TIMING and k not in RUNTIME_ONLY}
    if isinstance(tree, list):
        return [without_timing(v) for v in tree]
    return tree


def assert_same_results(got: dict, expected: dict) -> None:
    """Same schema, same values but for timings and runtime-only entries."""
    assert keys(got) == keys(expected), keys(got) ^ keys(expected)
    a, b = without_timing(got), without_timing(expected)
    for k in b:
        assert a[k] == b[k], (k, a[k], b[k]) if not isinstance(b[k], list) else k
    assert expected["counterfactuals"]["made"] > 0  # the run really taught something
    assert expected["leakage"]["sent"] > 0
