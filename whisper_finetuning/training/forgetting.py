"""What fine-tuning cost on the keep set (``keep_test_csv``): its WER and CER zero-shot and by
the selected checkpoint, their paired differences (fine-tuned minus zero-shot, so a positive
difference is forgetting) with the paired bootstrap's 95% interval and p-value (blocked by
the manifest's ``spk_id`` where it has the column, else by utterance;
``analysis.comparison.pairs``), and the non-speech rows' hallucination rates:
``forgetting_NAME.json`` and ``.md`` in the output folder."""

import json
import logging
import os

from whisper_finetuning.analysis.comparison.pairs import BLOCK, add_speakers, paired_difference
from whisper_finetuning.common.files import write_json, write_text

logger = logging.getLogger(__name__)

MEASURES = ("WER", "CER")


def _read(folder, name):
    """A decoded set's summary and scored utterances by ID."""
    with open(os.path.join(folder, f"summary_{name}.json")) as f:
        summary = json.load(f)
    utterances = {}
    with open(os.path.join(folder, f"utterances_{name}.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                utterances[row["id"]] = row
    return summary, utterances


def write_forgetting(output_folder, name, csv_path=None):
    """Compare the keep set ``name`` (manifest ``csv_path``: its speakers) zero-shot
    (``zero_shot/``) and fine-tuned; write and return the comparison."""
    zero_shot, before = _read(os.path.join(output_folder, "zero_shot"), name)
    fine_tuned, after = _read(output_folder, name)
    ids = sorted(set(before) & set(after))
    add_speakers([*before.values(), *after.values()], csv_path)
    block = BLOCK if ids and BLOCK in before[ids[0]] else None
    result = {"keep_set": name, "n_utterances": len(ids), "block": block or "utterance"}
    for measure in MEASURES:
        key = measure.lower()
        difference = {"difference": None, "ci95": [None, None], "p": None, "n_blocks": 0}
        if ids:
            difference = paired_difference(
                [after[i] for i in ids], [before[i] for i in ids], measure, block
            )
        result[key] = {"zero_shot": zero_shot[key], "fine_tuned": fine_tuned[key], **difference}
    result["hallucination_rate"] = {
        "zero_shot": zero_shot["nonspeech"]["hallucination_rate"],
        "fine_tuned": fine_tuned["nonspeech"]["hallucination_rate"],
        "n": fine_tuned["nonspeech"]["n"],
    }
    write_json(os.path.join(output_folder, f"forgetting_{name}.json"), result)
    text = format_forgetting(result)
    write_text(os.path.join(output_folder, f"forgetting_{name}.md"), text + "\n")
    logger.info("forgetting on %s: %s", name, text.splitlines()[-1])
    return result


def _number(value):
    return "n/a" if value is None else f"{value:.2f}"


def format_forgetting(result):
    """The comparison as Markdown: one row per measure, then the WER headline."""
    lines = [
        f"# Forgetting on {result['keep_set']}",
        "",
        f"{result['n_utterances']} utterances, paired bootstrap by {result['block']}; "
        "difference: fine-tuned minus zero-shot (positive: forgotten).",
        "",
        "| measure | zero-shot | fine-tuned | difference | 95% CI | p |",
        "|---|---|---|---|---|---|",
    ]
    for measure in MEASURES:
        row = result[measure.lower()]
        lines.append(
            f"| {measure} | {_number(row['zero_shot'])} | {_number(row['fine_tuned'])} | "
            f"{_number(row['difference'])} | {_interval(row)} | {_number(row['p'])} |"
        )
    hall = result["hallucination_rate"]
    lines.append(
        f"| non-speech rows with words (%, n={hall['n']}) | {_number(hall['zero_shot'])} | "
        f"{_number(hall['fine_tuned'])} | | | |"
    )
    wer = result["wer"]
    lines += ["", f"WER delta {_number(wer['difference'])} points (95% CI {_interval(wer)})"]
    return "\n".join(lines)


def _interval(row):
    lo, hi = row["ci95"]
    return "n/a" if lo is None else f"{lo:.2f} to {hi:.2f}"
