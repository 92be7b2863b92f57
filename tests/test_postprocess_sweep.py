"""benchmarks/postprocess_sweep.py: the nested choice of a post-processing rule, by hand."""

from __future__ import annotations

import pytest

from helpers_runs import load_benchmark


def test_nested_choice_scores_each_fold_with_the_rule_best_on_the_other_folds() -> None:
    sweep = load_benchmark("postprocess_sweep")
    a, b = (0.5, "largest"), (0.3, "largest")
    # fold x: p1, p2; fold y: p3; fold z: p4
    fold_of = {"p1": "x", "p2": "x", "p3": "y", "p4": "z"}
    scores = {a: {"p1": 0.9, "p2": 0.9, "p3": 0.2, "p4": 0.6},
              b: {"p1": 0.1, "p2": 0.1, "p3": 0.8, "p4": 0.9}}
    out, chosen = sweep.nested_choice(scores, fold_of)
    # x: on p3, p4 a scores 0.4, b 0.85 → b; y: on p1, p2, p4 a 0.8, b 0.3667 → a; z: on p1-p3 a 0.6667, b 0.3333 → a
    assert chosen == {"x": b, "y": a, "z": a}
    assert out == {"p1": 0.1, "p2": 0.1, "p3": 0.2, "p4": 0.6}
    # ties go to the first rule in the table's order
    _, tied = sweep.nested_choice({a: {"p1": 0.5, "p3": 0.5}, b: {"p1": 0.5, "p3": 0.5}}, {"p1": "x", "p3": "y"})
    assert tied == {"x": a, "y": a}
    with pytest.raises(SystemExit, match="at least two folds"):
        sweep.nested_choice(scores, {"p1": "x", "p2": "x"})
