"""Switzerland's languages synthesised offline with espeak-ng: the Swiss demo's corpus.

German, French and Italian sentences of our own (``swiss_sentences/LANGUAGE.txt``, one
sentence per line, the same meaning on the same line) are each spoken by several espeak-ng
voices and variants of their language, with the accent corpus's machinery
(``data.prepare.accent_corpus``: deterministic prosody, byte-identical audio per seed, atomic
files). Every language is split by sentence with the same seed, so no sentence (nor its
translation) crosses splits, and every voice speaks every sentence of its language's splits.
The manifests carry a ``language`` column (each row's decoder prompt) and the voice as
``dialect``.

Usage:
    python -m whisper_finetuning.data.prepare.swiss_corpus DATA_FOLDER \
        [--save_folder DIR] [--seed N]
"""

import sys
from pathlib import Path

from whisper_finetuning.data.prepare.accent_corpus import (
    DEFAULT_SEED,
    SPLITS,
    load_sentences,
    plan_split,
    run_command_line,
    split_sentences,
    synthesize_corpus,
)

SENTENCES_FOLDER = Path(__file__).with_name("swiss_sentences")
# espeak-ng voices (+variants: m1-m7 male, f1-f4 female) per language; fr-ch is Swiss French.
VOICES = {
    "german": ("de", "de+m3", "de+f2", "de+m7"),
    "french": ("fr-ch", "fr-ch+f3", "fr-fr+m2", "fr-be+f1"),
    "italian": ("it", "it+m4", "it+f4", "it+m6"),
}


def prepare_swiss_corpus(
    data_folder: str | Path,
    save_folder: str | Path,
    n_valid_sentences: int = 8,
    n_test_sentences: int = 16,
    n_train_sentences: int | None = None,
    voices: dict[str, tuple[str, ...]] | None = None,
    seed: int = DEFAULT_SEED,
) -> dict[str, str]:
    """Synthesise every language's sentences by its voices; write train/valid/test manifests.

    The split sizes count sentences per language. Returns {"train": path, "valid": path,
    "test": path} of the CSVs in ``save_folder``; returns at once when they are current.
    """
    plan = {split: [] for split in SPLITS}
    for language, language_voices in (voices or VOICES).items():
        sentences = load_sentences(SENTENCES_FOLDER / f"{language}.txt")
        splits = split_sentences(
            len(sentences), n_valid_sentences, n_test_sentences, n_train_sentences, seed
        )
        for split in SPLITS:
            plan[split] += plan_split(sentences, splits[split], tuple(language_voices), language)
    return synthesize_corpus(plan, data_folder, save_folder, seed)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build the corpus and print the size of each split per language."""

    def describe(rows):
        per_language = {lang: sum(r["language"] == lang for r in rows) for lang in VOICES}
        return f"{len(rows)} utterances {per_language}"

    return run_command_line(argv, __doc__.splitlines()[0], prepare_swiss_corpus, describe)


if __name__ == "__main__":
    sys.exit(main())
