"""The mutation list (tests/mutations/mutants.py) stays applicable: each bug's snippet occurs exactly
once in its file, and each test it names exists. Running the mutants is tests/mutations/run.py."""

import ast
import sys

import pytest
from support.workflow import REPO

sys.path.insert(0, str(REPO / "tests" / "mutations"))
from mutants import MUTANTS  # noqa: E402


def test_mutant_ids_are_unique():
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_applies_once_and_names_existing_tests(mutant):
    text = (REPO / mutant.path).read_text()
    assert text.count(mutant.original) == 1, f"{mutant.id}: snippet found {text.count(mutant.original)} times in {mutant.path}"
    assert mutant.replacement != mutant.original
    for test in mutant.tests:
        path, _, name = test.partition("::")
        assert (REPO / path).is_file(), test
        if name:
            tree = ast.parse((REPO / path).read_text())
            assert name.split("[")[0] in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, test
