"""The analysis tools (diagnosis, review server) start without torch: they must run where only
the logs are, and start fast."""

import subprocess
import sys

import pytest

from whisper_finetuning.decoding import search as decoding
from whisper_finetuning.evaluation import text


@pytest.mark.parametrize(
    "module",
    ["whisper_finetuning.analysis.diagnosis.run", "whisper_finetuning.analysis.review.server"],
)
def test_analysis_imports_do_not_load_torch(module):
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_one_loop_stop_and_one_edit_distance():
    assert decoding.LoopStop is text.LoopStop
    assert text.edit_distance("a b c d".split(), "a x c".split()) == 2  # one sub, one del
    assert (
        text.LoopStop(min_repeats=4, min_tokens=8).cut("go to at the at the at the at the".split())
        == 4
    )
