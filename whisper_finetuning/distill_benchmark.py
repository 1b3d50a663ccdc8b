"""A teacher and its student side by side on one manifest: WER and decode speed of each, and
speculative decoding (the student drafts, the teacher verifies) with its speed-up and whether
its transcripts are the teacher's.

Every system transcribes each utterance alone (batch 1, greedy), encoder included; the
student reads audio through its own encoder. Each system's time is split into the encoder's
share and milliseconds per decoded token, so a student's speed-up separates what its
shallower decoder gains per token from what longer or shorter transcripts cost. ``--cut N``
makes the student from the teacher itself (N maximally spaced decoder layers, untrained), the
initialisation a distillation run starts from.

Usage: python -m whisper_finetuning.distill_benchmark TEACHER (--student EXP_OR_MODEL | --cut N)
    --audio MANIFEST [--data_folder D] [--limit 100] [--draft_tokens 4] [--language L]
    [--output results.json]
"""

import argparse
import copy
import json
import sys
import time

import torch

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.common.files import write_json
from whisper_finetuning.data.audio import read_audio
from whisper_finetuning.data.pseudo_labels import input_rows
from whisper_finetuning.decoding.search import greedy_search
from whisper_finetuning.decoding.speculative import speculative_greedy
from whisper_finetuning.evaluation.scoring import Normalizers
from whisper_finetuning.evaluation.text import edit_distance
from whisper_finetuning.model.sources import load_frozen
from whisper_finetuning.model.student import keep_decoder_layers


def _wer(normalize, references, hypotheses):
    errors = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_words = normalize(ref).split()
        errors += edit_distance(ref_words, normalize(hyp).split())
        words += len(ref_words)
    return 100 * errors / max(words, 1)


@torch.no_grad()
def _transcribe(model, wavs, search):
    """Each clip's transcript, the seconds all of them took, the encoder's share of them and
    the tokens decoded."""
    texts, seconds, encoder_seconds, tokens = [], 0.0, 0.0, 0
    for wav in wavs:
        start = time.perf_counter()
        encoded = model.encode(model.features(wav[None]))
        encoded_at = time.perf_counter()
        hypothesis = search(model, encoded)
        seconds += time.perf_counter() - start
        encoder_seconds += encoded_at - start
        texts.append(model.decode_text(hypothesis))
        tokens += len(hypothesis)
    return texts, seconds, encoder_seconds, tokens


def run(teacher, student, wavs, references, draft_tokens=4, max_new_tokens=None):
    """The comparison's numbers (``utterances_per_s``, ``wer`` per system, ...)."""
    greedy = lambda model, out: greedy_search(model, out, max_new_tokens)[0][0]  # noqa: E731
    counts = [0, 0]

    def assisted(model, out):
        hyp, (drafted, accepted) = speculative_greedy(
            model, student, out, model.prompt(), draft_tokens, max_new_tokens
        )
        counts[0] += drafted
        counts[1] += accepted
        return hyp

    _transcribe(teacher, wavs[:1], greedy)  # warm-up: first-call allocations
    results = {}
    for name, model, search in (
        ("teacher", teacher, greedy),
        ("student", student, greedy),
        ("speculative", teacher, assisted),
    ):
        texts, seconds, encoder_seconds, tokens = _transcribe(model, wavs, search)
        results[name] = {"texts": texts, "seconds": seconds}
        results[name] |= {"encoder_seconds": encoder_seconds, "tokens": tokens}
    normalize = Normalizers.of("auto", teacher)
    summary = {"utterances": len(wavs), "draft_tokens": draft_tokens}
    for name, found in results.items():
        decoder_seconds = found["seconds"] - found["encoder_seconds"]
        summary[name] = {
            "utterances_per_s": len(wavs) / found["seconds"],
            "wer": _wer(normalize, references, found["texts"]),
            "encoder_share": found["encoder_seconds"] / found["seconds"],
            "tokens_per_utterance": found["tokens"] / len(wavs),
            "decoder_ms_per_token": 1000 * decoder_seconds / max(found["tokens"], 1),
        }
    teacher_texts = results["teacher"]["texts"]
    student_texts = results["student"]["texts"]
    summary["student"]["wer_vs_teacher"] = _wer(normalize, teacher_texts, student_texts)
    summary["student_speedup"] = results["teacher"]["seconds"] / results["student"]["seconds"]
    # What the speed-up would be with the teacher's transcript lengths: per decoded token, and
    # per utterance (the student's encoder pass, then the teacher's token count at the
    # student's pace): the most a student this fast per token can give.
    summary["student_speedup_per_token"] = (
        summary["teacher"]["decoder_ms_per_token"] / summary["student"]["decoder_ms_per_token"]
    )
    student_at_teacher_tokens = (
        results["student"]["encoder_seconds"]
        + results["teacher"]["tokens"] * summary["student"]["decoder_ms_per_token"] / 1000
    )
    summary["student_speedup_at_teacher_tokens"] = (
        results["teacher"]["seconds"] / student_at_teacher_tokens
    )
    summary["speculative_speedup"] = (
        results["teacher"]["seconds"] / results["speculative"]["seconds"]
    )
    summary["speculative_identical"] = sum(
        a == b for a, b in zip(results["speculative"]["texts"], teacher_texts, strict=True)
    )
    summary["draft_acceptance"] = counts[1] / max(counts[0], 1)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", help="experiment folder, bundled:NAME or model folder")
    parser.add_argument("--student", help="experiment folder or model")
    parser.add_argument("--cut", type=int, help="student: N spaced decoder layers of the teacher")
    parser.add_argument("--audio", required=True, help="manifest with ID, wav, wrd")
    parser.add_argument("--data_folder", help="what $data_root is (default: the manifest's)")
    parser.add_argument("--limit", type=int, default=100, help="first N rows")
    parser.add_argument("--draft_tokens", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, help="default: the decoder's limit")
    parser.add_argument("--whisper_cache", help="where bundled models are kept")
    parser.add_argument(
        "--window_seconds", type=int, default=30, help="encoder window of models (runs: theirs)"
    )
    parser.add_argument("--language", help="a multilingual model's prompt language (runs: theirs)")
    parser.add_argument("--output", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    try:
        if (args.student is None) == (args.cut is None):
            raise RecipeError("give either --student or --cut")
        model_options = args.whisper_cache, args.window_seconds, args.language
        teacher, _ = load_frozen(args.teacher, *model_options)
        if args.cut:
            student = copy.deepcopy(teacher)
            keep_decoder_layers(student.model, args.cut)
        else:
            student, _ = load_frozen(args.student, *model_options)
        rows = input_rows(args.audio, args.data_folder)[: args.limit]
        wavs = [read_audio(row["path"]) for row in rows]
        references = [row["wrd"] for row in rows]
        summary = run(teacher, student, wavs, references, args.draft_tokens, args.max_new_tokens)
    except (RecipeError, OSError, ValueError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    if args.output:
        write_json(args.output, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
