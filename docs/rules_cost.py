"""What openai's transcribe rules cost on real speech: the measurement of docs/nonspeech.md.

Whisper tiny.en zero-shot (the bundled checkpoint, in Hugging Face format) decodes the first
N rows of an accent-corpus valid manifest greedily, as hparams/demo_tiny_en.yaml's
valid_search does (decode_max_tokens 96, the loop stop), without the rules, with the
no-speech rule only (temperatures [0.0]), and with the full rules at best_of 1 and 5. The
encoder runs once per batch; each search is timed on its own (utterances per second of
search). WER and its 95% interval are the recipe's Scorer's, with the recipe's normaliser.

    PYTHONPATH=. python docs/rules_cost.py MODEL_FOLDER CORPUS_FOLDER [N] [WINDOW_SECONDS]
"""

import csv
import os
import sys
import time

import torch

from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.decoding.search import GreedySearch, LoopStop
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


def main(model_folder, corpus, n=100, window_seconds=30):
    torch.manual_seed(0)
    whisper = WhisperASR(model_folder, window_seconds=window_seconds).eval()
    loop_stop = LoopStop(min_repeats=4, min_tokens=16)  # the demo's loop_min_* values
    manifest = os.path.join(corpus, "manifests", "valid.csv")
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
    print("| search | WER % | 95% CI | loops stopped | changed | utterances/s (search) |")
    print("|---|---|---|---|---|---|")
    plain = None  # the no-rules hypotheses: how many each setting changes
    for name, rules in SETTINGS.items():
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
        low, high = summary["wer_ci95"]
        print(
            f"| {name} | {summary['wer']:.2f} | {low:.1f}-{high:.1f} | "
            f"{summary['loop_stopped']} | {changed} | {len(rows) / seconds:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], *(int(a) for a in args[2:]))
