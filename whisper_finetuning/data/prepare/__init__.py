"""Data preparation: each dataset's preparer writes train/valid/test manifests.

``prepare(dataset, data_folder, save_folder, **options)`` picks the preparer from ``PREPARERS``
(``dataset`` in the yaml, ``prep_options`` its keyword arguments). The data-source preparers
(Hugging Face, Lhotse, shards) import their libraries only when they run.
"""

from whisper_finetuning.common.errors import RecipeError
from whisper_finetuning.data.prepare import (
    accent_corpus,
    corpora,
    hf_dataset,
    lhotse_cuts,
    shards,
    swiss_corpus,
)

PREPARERS = {
    "librispeech": corpora.prepare_librispeech,
    "common_voice": corpora.prepare_common_voice,
    "tsv_folder": corpora.prepare_tsv_folder,
    "accent_corpus": accent_corpus.prepare_accent_corpus,
    "swiss_corpus": swiss_corpus.prepare_swiss_corpus,
    "stt4sg350": corpora.prepare_stt4sg350,
    "sds200": corpora.prepare_sds200,
    "swissdial": corpora.prepare_swissdial,
    "hf": hf_dataset.prepare_hf,
    "lhotse": lhotse_cuts.prepare_lhotse,
    "shards": shards.prepare_shards,
}


def prepare(dataset: str, data_folder, save_folder, **options) -> dict:
    """Prepare ``dataset`` (a key of ``PREPARERS``) with the preparer's keyword ``options``."""
    if dataset not in PREPARERS:
        raise ValueError(f"unknown dataset '{dataset}'; choose one of: {', '.join(PREPARERS)}")
    return PREPARERS[dataset](data_folder, save_folder, **options)


def prepare_or_fail(dataset: str, data_folder, save_folder, **options) -> dict:
    """``prepare``, with a failure said in one line (a ``RecipeError``)."""
    try:
        return prepare(dataset, data_folder, save_folder, **options)
    except (OSError, ValueError, RuntimeError) as error:
        raise RecipeError(f"data preparation failed: {error}") from None
