"""A bounded fuzz run over reader + checker + writers on every engine (the long run is
benchmarks/fuzz_extract.py): mutated slices of a real venv's archive and every hostile shape;
nothing outside the sandbox's dst changes, no exception but ezpz's own, memory bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_harness import Findings, Sandbox, _slices, hostile, mutate, run_case, venv_archives

#: Examples per engine: the whole run stays well under a minute.
EXAMPLES = {"python": 2000, "python-no-c": 1000, "python-pool": 1000, "tar": 400}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    box = Sandbox(work / "box")
    rnd = random.Random(1234)
    seeds = [s for a in venv_archives(work) for s in _slices(a, rnd, 8)] + hostile(box)
    return box, seeds


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(EXAMPLES))
def test_fuzz_extraction(corpus, engine, monkeypatch):
    box, seeds = corpus
    if engine == "python-no-c":
        monkeypatch.setenv("EZPZ_EXTRACT_C", "0")
    if engine == "python-pool":  # the writer pool with 4 threads, whatever the cores
        monkeypatch.setattr("ezpz.extract.extractor.write_threads", lambda total: 4)
    eng = "tar" if engine == "tar" else "python"
    findings = Findings()

    @settings(max_examples=EXAMPLES[engine], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        archive = data.draw(st.sampled_from(seeds))
        rnd = random.Random(data.draw(st.integers(0, 2**32 - 1)))
        for _ in range(data.draw(st.integers(0, 4))):
            archive = mutate(archive, rnd, box)
        run_case(archive, eng, box, findings)
        assert not findings.problems, findings.problems[-1]

    case()
    print(f"{engine}: {findings.cases} cases, {findings.extracted} extracted, "
          f"{findings.refused} refused")
    assert findings.cases >= EXAMPLES[engine]
    assert findings.refused and findings.extracted  # both outcomes were exercised
