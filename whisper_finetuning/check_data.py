"""Data checks before training: leakage between splits, unusable rows, audio formats, shift.

    python -m whisper_finetuning.check_data \
        --train train.csv --valid valid.csv --test test.csv [...] \\
        [--data_folder DIR] [--output DIR] [--tokenizer DIR]

Writes ``data_report.md`` and ``data_report.json`` and exits with status 1 when any finding
is an error (``whisper_finetuning/data/checks.py`` says what is checked).
"""

import argparse
import json
import os
import sys
from pathlib import Path

from whisper_finetuning.data.checks import (
    DECODER_OVERHEAD,
    count_by_severity,
    default_tokenizer,
    run_checks,
    tokenizer_counter,
)
from whisper_finetuning.data.manifests import DataError, named_manifests
from whisper_finetuning.model.vocabulary import MAX_TARGET_POSITIONS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training manifest (CSV)")
    parser.add_argument("--valid", required=True, help="validation manifest (CSV)")
    parser.add_argument("--test", nargs="+", default=[], help="test manifests (CSV)")
    parser.add_argument("--data_folder", default=".", help="replaces $data_root in manifests")
    parser.add_argument("--output", default=".", help="folder for data_report.md/.json")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="Whisper model or tokenizer folder with tokenizer.json (default: the bundled "
        "tiny.en's if installed, else an estimate)",
    )
    parser.add_argument(
        "--max_tokens",
        type=int,
        help="the decoder's positions (default: the tokenizer folder's config.json, else "
        f"{MAX_TARGET_POSITIONS})",
    )
    args = parser.parse_args(argv)

    try:
        manifests = named_manifests(args.train, args.valid, args.test)
    except DataError as error:
        sys.exit(f"error: {error}")
    tokenizer_json = args.tokenizer / "tokenizer.json" if args.tokenizer else default_tokenizer()
    if args.tokenizer and not tokenizer_json.is_file():
        sys.exit(f"error: {tokenizer_json} not found")
    token_count = tokenizer_counter(tokenizer_json) if tokenizer_json else None
    max_tokens = args.max_tokens or model_positions(tokenizer_json)
    findings = run_checks(
        manifests,
        args.data_folder,
        args.output,
        token_count,
        max_tokens,
        token_count_name=f"{tokenizer_json} + {DECODER_OVERHEAD} prompt/end tokens",
    )
    for finding in findings:
        print(f"{finding['severity']}: {finding['kind']}: {finding['message']}")
    counts = count_by_severity(findings)
    print(
        f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} infos; "
        f"report in {os.path.join(args.output, 'data_report.md')}"
    )
    return 1 if counts["error"] else 0


def model_positions(tokenizer_json):
    """The decoder positions in the Hugging Face config beside ``tokenizer_json``, else
    Whisper's 448."""
    config = tokenizer_json.parent / "config.json" if tokenizer_json else None
    if config is None or not config.is_file():
        return MAX_TARGET_POSITIONS
    return json.loads(config.read_text()).get("max_target_positions", MAX_TARGET_POSITIONS)


if __name__ == "__main__":
    sys.exit(main())
