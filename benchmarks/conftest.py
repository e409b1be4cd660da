"""Saves the benchmarks measured so far after every case (FASTNAS_BENCH_PARTIAL names the
file), so a run stopped by a time limit keeps what it measured; benchmarks/run.py reads it."""

import json
import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    path = os.environ.get("FASTNAS_BENCH_PARTIAL")
    session = getattr(item.config, "_benchmarksession", None)
    if not path or session is None:
        return
    measured = [bench.as_dict(include_data=False) for bench in session.benchmarks if not bench.has_error]
    partial = Path(path)
    staging = partial.with_suffix(".tmp")
    staging.write_text(json.dumps({"benchmarks": measured}, default=str))  # params hold dtypes
    staging.replace(partial)  # atomic: a kill never leaves half a file
