"""transfer.threads: checked in the schema, carried by the worker spec, resolved per node."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ezpz.config import EXTRACT_THREADS_AUTO, TransferConfig
from ezpz.errors import ConfigError
from ezpz.extract.decode import resolve_threads
from ezpz.transfer import WorkerSpec, spec_for


def test_the_spec_carries_threads_and_auto_stays_auto(tmp_path):
    src = tmp_path / "env.tar.zst"
    src.write_bytes(b"x")
    for given, carried in (("auto", 0), ("3", 3), (1, 1)):
        spec = spec_for(TransferConfig(src=str(src), threads=given))
        assert spec.threads == carried
        again = WorkerSpec.from_json(spec.to_json())
        assert again == spec
        assert again.settings["threads"] == str(given).lower()  # as the user gave it


@pytest.mark.parametrize("value", [-1, 300, "4", True, 2.0, None])
def test_a_spec_with_a_bad_thread_count_is_refused(tmp_path, value):
    spec = spec_for(TransferConfig(src=str(tmp_path / "a.tar.zst")))
    data = spec.to_json()
    data["threads"] = value
    with pytest.raises(ConfigError, match=r"spec: field 'threads' has a bad value"):
        WorkerSpec.from_json(data)


def test_auto_is_the_cores_of_the_affinity_mask_capped():
    assert resolve_threads(5) == 5
    assert resolve_threads(0) == min(len(os.sched_getaffinity(0)), EXTRACT_THREADS_AUTO)
    if not shutil.which("taskset"):
        pytest.skip("taskset (util-linux) is not installed")
    code = "from ezpz.extract.decode import resolve_threads; print(resolve_threads(0))"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_decoding_gets_half_the_threads_from_four_on():
    from ezpz.extract.decode import decode_threads

    assert [decode_threads(n) for n in (1, 2, 3, 4, 5, 8, 16)] == [1, 1, 1, 2, 2, 4, 8]
