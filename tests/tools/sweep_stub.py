"""A stand-in for train.py in sweep tests: writes what a finished run leaves (run.json,
epochs.jsonl, valid utterances, the fit marker; the test summary only with
decode_test_sets=True) in a fraction of a second, after ``STUB_SECONDS`` of "training".

Ten valid utterances of one word, one speaker each: at epoch 1 the first ``10 * lr`` have
one word error (WER ``100 * lr``), at epoch 2 half as many, except from lr 0.8 on, where the
WER stalls while the loss falls (seed 001's warning sign); epoch 2 is logged
``STUB_EPOCH_SECONDS`` after epoch 1. Each start appends a line to ``starts.txt``. A learning
rate of 0 or less is handed to train.py itself, which refuses it in one line.
"""

import json
import os
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if "=" in a)
folder = Path(args["output_folder"])
folder.mkdir(parents=True, exist_ok=True)
with open(folder / "starts.txt", "a") as starts:
    starts.write(f"{os.getpid()} decode_test_sets={args['decode_test_sets']}\n")
if float(args["lr"]) <= 0:
    os.execv(sys.executable, [sys.executable, "train.py", *sys.argv[1:]])
time.sleep(float(os.environ.get("STUB_SECONDS", "0")))
lr = float(args["lr"])
info = {"selection_metric": args["selection_metric"], "test_csv": ["/data/test.csv"]}
(folder / "run.json").write_text(json.dumps(info))
(folder / "valid").mkdir(exist_ok=True)
epochs_file = folder / "epochs.jsonl"
epochs_file.write_text("")
for epoch, wer in ((1, 100 * lr), (2, 100 * lr if lr >= 0.8 else 50 * lr)):
    errors = round(wer / 10)
    rows = [
        {
            "id": f"v{i}",
            "spk_id": f"s{i}",
            "ref": "x",
            "hyp": "y",
            "word_errors": 1 if i < errors else 0,
            "words": 1,
        }
        for i in range(10)
    ]
    valid = folder / "valid" / f"utterances_epoch{epoch}.jsonl"
    valid.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(epochs_file, "a") as log:
        log.write(json.dumps({"epoch": epoch, "loss": 3.0 - epoch, "WER": 10.0 * errors}) + "\n")
    if epoch == 1:
        time.sleep(float(os.environ.get("STUB_EPOCH_SECONDS", "0")))
(folder / "save").mkdir(exist_ok=True)
(folder / "save" / "fit_done.json").write_text('{"epochs": 2}')
if args["decode_test_sets"] == "True":
    summary = {"wer": 5.0, "wer_ci95": [1.0, 9.0], "n_utterances": 20}
    (folder / "summary_test.json").write_text(json.dumps(summary))
