"""What openai's transcribe rules cost and buy: the measurements of docs/nonspeech.md.

A Whisper in Hugging Face format (the bundled tiny.en converted, or an ``export_hf`` folder)
decodes the first N rows of a manifest as hparams/demo_tiny_en.yaml's searches do
(decode_max_tokens 96, the loop stop; greedy, or beam with ``--beam_size``) without the
rules, with the no-speech rule only (temperatures [0.0]), and with the full rules at best_of 1
and 5. The encoder runs once per batch; each search is timed on its own (utterances per
second of search). WER and its 95% interval are the recipe's Scorer's, with the recipe's
normaliser, over the speech rows; rows with an empty transcript count as non-speech (words on
how many of them).

    python -m whisper_finetuning.profiling.rules_cost MODEL_FOLDER MANIFEST \
        [--data_folder D] [--limit N] [--window_seconds W] [--beam_size B]
"""

import argparse
import csv
import os
import time

import torch

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import BeamSearch, GreedySearch, LoopStop
from whisper_finetuning.decoding.transcribe_rules import TranscribeRules
from whisper_finetuning.evaluation.scoring import Normalizers, Scorer
from whisper_finetuning.model.asr import EncoderStates, WhisperASR

BATCH = 16  # the demo's test_batch_size (valid and test loaders)
SETTINGS = {
    "no rules": None,
    "no-speech rule only (temperatures [0.0])": TranscribeRules(temperatures=(0.0,)),
    "full rules, best_of 1": TranscribeRules(best_of=1),
    "full rules, best_of 5": TranscribeRules(best_of=5),
}


def measure(model_folder, manifest, data_folder, n=100, window_seconds=30, beam_size=1):
    """Print a table row per rules setting."""
    torch.manual_seed(0)
    whisper = WhisperASR(model_folder, window_seconds=window_seconds).eval()
    loop_stop = LoopStop(min_repeats=4, min_tokens=16)  # the demo's loop_min_* values
    corpus = str(data_folder)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    batches, encode_seconds = [], 0.0
    for first in range(0, len(rows), BATCH):
        batch = rows[first : first + BATCH]
        wavs = [read_audio(r["wav"].replace("$data_root", corpus)) for r in batch]
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        start = time.perf_counter()
        with torch.no_grad():
            out = whisper.encode(whisper.features(padded, lengths / lengths.max()))
        encode_seconds += time.perf_counter() - start
        batches.append((batch, EncoderStates([(list(range(len(batch))), out)])))
    print(f"{len(rows)} utterances, encoder {encode_seconds:.1f} s ({window_seconds} s window)")
    normalize = Normalizers.of("auto", whisper)
    print("| rules | WER % | 95% CI | non-speech with words | loops stopped | changed | utt/s |")
    print("|---|---|---|---|---|---|---|")
    plain = None  # the no-rules hypotheses: how many each setting changes
    for name, rules in SETTINGS.items():
        if beam_size > 1:
            search = BeamSearch(beam_size, 96, loop_stop=loop_stop, rules=rules)
        else:
            search = GreedySearch(96, loop_stop, rules)
        scorer, seconds, texts = Scorer(normalize, ["dialect"]), 0.0, []
        for batch, states in batches:
            start = time.perf_counter()
            tokens, looped = search(whisper, states)
            seconds += time.perf_counter() - start
            texts += [whisper.decode_text(t) for t in tokens]
            scorer.append(
                [r["ID"] for r in batch],
                [whisper.decode_text(t) for t in tokens],
                [r["wrd"] for r in batch],
                {c: [r[c] for r in batch] for c in ("language", "dialect")},
                [float(r["duration"]) for r in batch],
                {"loop_stopped": looped},
            )
        plain = plain or texts
        changed = sum(a != b for a, b in zip(plain, texts, strict=True))
        summary = scorer.summary()
        wer, interval = "-", "-"  # no speech row
        if summary["wer"] is not None:
            wer, interval = f"{summary['wer']:.2f}", "{:.1f}-{:.1f}".format(*summary["wer_ci95"])
        nonspeech = summary["nonspeech"]
        print(
            f"| {name} | {wer} | {interval} | "
            f"{nonspeech['n_with_words']} of {nonspeech['n']} | "
            f"{summary['loop_stopped']} | {changed} | {len(rows) / seconds:.2f} |",
            flush=True,
        )


def main(argv=None):
    """The command line: the table of docs/nonspeech.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_folder", help="a Whisper in Hugging Face format")
    parser.add_argument("manifest", help="a CSV manifest (ID, duration, wav, wrd, ...)")
    parser.add_argument("--data_folder", help="what $data_root is (default: the manifest's)")
    parser.add_argument("--limit", type=int, default=100, help="the first N rows")
    parser.add_argument("--window_seconds", type=int, default=30)
    parser.add_argument("--beam_size", type=int, default=1, help="1: greedy")
    args = parser.parse_args(argv)
    data_folder = args.data_folder or os.path.dirname(os.path.abspath(args.manifest))
    measure(
        args.model_folder,
        args.manifest,
        data_folder,
        args.limit,
        args.window_seconds,
        args.beam_size,
    )


if __name__ == "__main__":
    main()
