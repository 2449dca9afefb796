"""The examples in the public docstrings run and print what they say."""

import doctest
import glob
import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest

MODULES = ["model", "metrics", "baselines", "compilation", "datasets", "estimator", "families", "fitted", "gating", "io",
           "joint", "landscape", "moments", "nonlinearities", "preprocessing", "recover", "sklearn", "sums",
           "_validate"]
# Classes whose methods' examples use the objects the class's own example makes (a fitted
# model), as a reader does: the class example runs first and shares its names.
SHARED = {"moejax.fitted.FittedMoE", "moejax.sklearn.MoERegressor",
          "moejax.sklearn.MoEClassifier"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"moejax.{name}")
    tests = sorted(doctest.DocTestFinder().find(module), key=lambda t: t.name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    shared = {}
    for test in tests:  # sorted: a class's test comes before its methods'
        owner = test.name.rsplit(".", 1)[0]
        if owner in shared:
            test.globs.update(shared[owner])
        runner.run(test, clear_globs=test.name not in SHARED)
        if test.name in SHARED:
            shared[test.name] = test.globs
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, result


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fenced_blocks():
    """Every fenced Python block of README.md and docs/*.md: (file, index, source). A block
    whose first line is `# fragment: <why>` is a fragment of a longer example, skipped."""
    blocks = []
    for path in [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs",
                                                                                  "*.md"))):
        with open(path) as f:
            text = f.read()
        found = re.findall(r"^( *)```python\n(.*?)^\1```$", text, flags=re.M | re.S)
        for i, (indent, body) in enumerate(found):
            source = textwrap.dedent(body)
            if not source.startswith("# fragment:"):
                blocks.append((os.path.relpath(path, ROOT), i, source))
    return blocks


BLOCKS = _fenced_blocks()


def test_the_docs_have_fenced_blocks():
    assert {path for path, _, _ in BLOCKS} >= {"README.md", "docs/api.md", "docs/scale.md"}


@pytest.mark.parametrize("path, index, source", BLOCKS,
                         ids=[f"{path}:{index}" for path, index, _ in BLOCKS])
def test_every_fenced_python_block_runs_verbatim(path, index, source, tmp_path):
    # In a fresh process (a block may write files: the temporary directory is its cwd).
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{path} block {index}:\n{out.stderr[-3000:]}"
