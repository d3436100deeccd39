"""What a new user runs first: the README's numpy example, verbatim, and `edgecompress --version`
(no torch needed for either)."""

from __future__ import annotations

import pathlib
import warnings

import pytest

import edgecompress as ec
from edgecompress.cli import main

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_numpy_example_runs_verbatim():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("```\n", start)]
    threads = ec.get_num_threads()
    try:
        with warnings.catch_warnings():  # (it asks for 4 threads, which may be more than this machine has)
            warnings.simplefilter("ignore", RuntimeWarning)
            namespace: dict = {}
            exec(compile(code, str(README), "exec"), namespace)
    finally:
        ec.set_num_threads(threads)
    w24 = namespace["w24"]
    assert w24.format == "2:4" and w24.sparsity == pytest.approx(0.5)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgecompress {ec.__version__}"
