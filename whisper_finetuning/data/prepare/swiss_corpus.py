"""Switzerland's languages synthesised offline with espeak-ng: the Swiss demo's corpus.

German, French and Italian sentences of our own (``swiss_sentences/LANGUAGE.txt``, one
sentence per line, the same meaning on the same line) are each spoken by several espeak-ng
voices and variants of their language, with the accent corpus's machinery
(``data.prepare.accent_corpus``: deterministic prosody, byte-identical audio per seed, atomic
files). Every language is split by sentence with the same seed, so no sentence (nor its
translation) crosses splits, and every voice speaks every sentence of its language's splits.
The manifests carry a ``language`` column (each row's decoder prompt) and the voice as
``dialect``.

What fine-tuning on these languages costs elsewhere is measured on a keep test set
(``keep_test.csv``, the recipe's ``keep_test_csv``): English sentences of the accent corpus
spoken by English voices, a language the demo does not train on, and non-speech clips
(``nonspeech_test.py``) prompted in German, where the multilingual base is known to invent
text. ``replay.csv`` holds other English sentences by the same voices, for ``replay_csv``.

Usage:
    python -m whisper_finetuning.data.prepare.swiss_corpus DATA_FOLDER \
        [--save_folder DIR] [--seed N]
"""

import sys
from pathlib import Path

from whisper_finetuning.data.prepare.accent_corpus import (
    DEFAULT_SEED,
    SENTENCES_FILE,
    SPLITS,
    load_sentences,
    plan_split,
    run_command_line,
    split_sentences,
    synthesize_corpus,
)
from whisper_finetuning.data.prepare.nonspeech_test import nonspeech_rows

SENTENCES_FOLDER = Path(__file__).with_name("swiss_sentences")
# espeak-ng voices (+variants: m1-m7 male, f1-f4 female) per language; fr-ch is Swiss French.
VOICES = {
    "german": ("de", "de+m3", "de+f2", "de+m7"),
    "french": ("fr-ch", "fr-ch+f3", "fr-fr+m2", "fr-be+f1"),
    "italian": ("it", "it+m4", "it+f4", "it+m6"),
}
# The keep and replay sets' English speakers: six voices, none of them trained on.
KEEP_VOICES = ("en-us", "en-us+f2", "en-gb+m3", "en-gb-scotland", "en-029+f1", "en-gb-x-rp+m5")
KEEP_TEST, REPLAY = "keep_test", "replay"  # their manifests' names
NONSPEECH_KEEP_LANGUAGE = "german"  # the prompt of the keep set's non-speech clips


def prepare_swiss_corpus(
    data_folder: str | Path,
    save_folder: str | Path,
    n_valid_sentences: int = 8,
    n_test_sentences: int = 16,
    n_train_sentences: int | None = None,
    voices: dict[str, tuple[str, ...]] | None = None,
    seed: int = DEFAULT_SEED,
    n_keep_sentences: int = 0,
    n_replay_sentences: int = 0,
    n_nonspeech_keep: int = 0,
) -> dict[str, str]:
    """Synthesise every language's sentences by its voices; write train/valid/test manifests,
    and ``keep_test.csv`` (``n_keep_sentences`` English sentences by ``KEEP_VOICES``, then
    ``n_nonspeech_keep`` non-speech clips) and ``replay.csv`` (``n_replay_sentences`` other
    English sentences) when asked for.

    The split sizes count sentences per language (per set for keep and replay). Returns
    {split: path} of the CSVs in ``save_folder``; returns at once when they are current.
    """
    voices = voices or VOICES
    plan = {split: [] for split in SPLITS}
    for language, language_voices in voices.items():
        sentences = load_sentences(SENTENCES_FOLDER / f"{language}.txt")
        splits = split_sentences(
            len(sentences), n_valid_sentences, n_test_sentences, n_train_sentences, seed
        )
        for split in SPLITS:
            plan[split] += plan_split(sentences, splits[split], tuple(language_voices), language)
    english = load_sentences(SENTENCES_FILE)
    english_splits = split_sentences(len(english), 0, n_keep_sentences, n_replay_sentences, seed)
    extra_rows = {}
    if n_keep_sentences or n_nonspeech_keep:
        plan[KEEP_TEST] = plan_split(english, english_splits["test"], KEEP_VOICES, "english")
        # Babble: the demo's voices (without variants) speaking its test sentences, reversed.
        babble_voices = sorted(
            {voice.split("+")[0] for group in voices.values() for voice in group}
        )
        babble_sentences = list(dict.fromkeys(utt.text for utt in plan["test"]))
        extra_rows[KEEP_TEST] = nonspeech_rows(
            data_folder, n_nonspeech_keep, seed, babble_voices, babble_sentences,
            NONSPEECH_KEEP_LANGUAGE,
        )  # fmt: skip
    if n_replay_sentences:
        plan[REPLAY] = plan_split(english, english_splits["train"], KEEP_VOICES, "english")
    return synthesize_corpus(plan, data_folder, save_folder, seed, extra_rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build the corpus and print the size of each split per language."""

    def describe(rows):
        per_language = {lang: sum(r["language"] == lang for r in rows) for lang in VOICES}
        return f"{len(rows)} utterances {per_language}"

    return run_command_line(argv, __doc__.splitlines()[0], prepare_swiss_corpus, describe)


if __name__ == "__main__":
    sys.exit(main())
