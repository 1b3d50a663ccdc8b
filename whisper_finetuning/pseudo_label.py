"""Label audio nobody transcribed with a Whisper (a run's selected checkpoint, a bundled model
or a Hugging Face directory) and write a training manifest of the labels that pass the filters.

The manifest's rows carry ``label_source: pseudo``, the model's confidence (``mean_logprob``,
``no_speech_prob``, ``compression_ratio``) and, where the input manifest gave a reference
transcript (``wrd``), the label's ``reference_wer``. ``--wer_threshold`` (10, as distil-whisper)
removes labels that far from their reference; the confidence thresholds are off unless given
(openai/whisper's own: --max_no_speech_prob 0.6, --min_mean_logprob -1, --max_compression_ratio
2.4). Every label is journaled in ``NAME.all.csv``: a killed run resumes where it stopped, and a
rerun with other thresholds only refilters. What each filter removed is printed.

Usage: python -m whisper_finetuning.pseudo_label SOURCE --audio AUDIO_OR_MANIFEST
    --output manifest.csv [--batch_size 8] [--beam_size 1] [--wer_threshold 10] ...
"""

import argparse
import sys

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data import pseudo_labels
from whisper_finetuning.decoding.pseudo_labelling import label_rows
from whisper_finetuning.decoding.search import BeamSearch
from whisper_finetuning.evaluation.scoring import Normalizers


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment folder, bundled:NAME or Hugging Face folder")
    parser.add_argument("--audio", required=True, help="audio file, folder or CSV manifest")
    parser.add_argument("--output", required=True, help="the manifest to write (CSV)")
    parser.add_argument("--data_folder", help="what $data_root means in --audio's manifest")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--beam_size", type=int, default=1, help="1: greedy search")
    parser.add_argument("--max_new_tokens", type=int, help="default: the decoder's limit")
    parser.add_argument("--language", help="prompt language of rows without a language column")
    parser.add_argument("--normalizer", default="auto", help="for the WER: auto, english, ...")
    parser.add_argument("--wer_threshold", type=float, default=10.0, help="percent")
    parser.add_argument("--max_no_speech_prob", type=float)
    parser.add_argument("--min_mean_logprob", type=float)
    parser.add_argument("--max_compression_ratio", type=float)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--whisper_cache", help="where bundled and Hub models are kept")
    parser.add_argument("--noprogressbar", action="store_true")
    return parser


def run(args):
    """Label, filter and write; returns the report (also printed)."""
    from whisper_finetuning.model.sources import load_frozen  # torch, after the arguments

    if args.batch_size < 1 or args.beam_size < 1:
        raise pseudo_labels.PseudoLabelError("--batch_size and --beam_size must be 1 or more")
    rows = pseudo_labels.input_rows(args.audio, args.data_folder)
    header = pseudo_labels.output_columns(rows)
    journal = pseudo_labels.Journal(pseudo_labels.journal_path(args.output), header)
    before = len(journal.labelled & {row["ID"] for row in rows})
    whisper, loaded = load_frozen(args.source, args.whisper_cache)
    whisper.to(args.device)
    search = BeamSearch(args.beam_size, args.max_new_tokens)
    normalize = Normalizers.of(args.normalizer, whisper)
    print(f"labelling with {loaded}")
    skipped = label_rows(
        whisper,
        rows,
        journal,
        search,
        normalize,
        args.batch_size,
        args.language,
        bar=not args.noprogressbar,
    )
    filters = pseudo_labels.Filters(
        args.wer_threshold, args.max_no_speech_prob, args.min_mean_logprob,
        args.max_compression_ratio,
    )  # fmt: skip
    order = [row["ID"] for row in rows]
    removed, kept = pseudo_labels.write_filtered(journal, order, args.output, filters)
    labelled = len(journal.labelled & set(order))
    report = {"labelled": labelled, "labelled_before": before, "skipped": dict(skipped)}
    report.update({"removed": removed, "kept": kept})
    print(f"labelled {labelled} of {len(rows)} rows ({before} by an earlier run)")
    for reason, count in skipped.items():
        print(f"skipped {count} row(s): {reason}")
    for name, count in removed.items():
        value = "on" if name == "empty" else getattr(filters, name)
        print(f"{name} {'off' if value is None else value}: removed {count}")
    print(f"kept {kept} of {labelled} in {args.output} (every label: {journal.path})")
    return report


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (RecipeError, OSError, ValueError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
