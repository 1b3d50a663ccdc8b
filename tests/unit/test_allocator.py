"""keep_freed_memory: a large freed tensor's pages stay in the process for the next one."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys, torch
from whisper_finetuning.training import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

torch.ones(1_000_000).add_(1)  # torch's first use (its threads, its caches) is not counted
before = resident_mb()
x = torch.ones(20_000_000)  # 80 MB, the size of tiny.en's embedding gradient
held = resident_mb()
del x
print(json.dumps({"applied": applied, "held": held - before, "freed": resident_mb() - before}))
"""


def resident_growth(mode):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_tensor_stays_resident_for_reuse():
    default, kept = resident_growth("default"), resident_growth("keep")
    assert kept["applied"] and not default["applied"]
    assert default["held"] > 70 and kept["held"] > 70
    assert default["freed"] < 1  # glibc's default: its pages go back to the system at once
    assert kept["freed"] == pytest.approx(kept["held"], abs=1)  # kept for the next step's tensor


HPARAMS_PROBE = """
import json, os, sys, torch
from whisper_finetuning.training.config import load_hparams

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

model, data, keep = sys.argv[1:]
overrides = {"whisper_hub": model, "data_folder": data, "keep_freed_memory": keep == "True"}
load_hparams("hparams/whisper_small.yaml", overrides)
torch.ones(1_000_000).add_(1)
before = resident_mb()
x = torch.ones(20_000_000)
del x
print(json.dumps({"freed": resident_mb() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("keep", [True, False])
def test_loading_the_hparams_applies_the_setting(keep, random_whisper_dir, tmp_path):
    """Loading the run's hparams applies it (not the Brain, not train.py's main): the encoder
    cache's pass, which runs before any Brain exists, and a run that builds its own Brain, as
    the benchmark does, reuse freed memory too."""
    done = subprocess.run(
        [sys.executable, "-c", HPARAMS_PROBE, str(random_whisper_dir), str(tmp_path), str(keep)],
        capture_output=True,
        text=True,
        check=True,
    )
    freed = json.loads(done.stdout.splitlines()[-1])["freed"]
    assert freed > 70 if keep else freed < 1
