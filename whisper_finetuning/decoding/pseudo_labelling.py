"""Transcribe unlabelled audio in batches with the recipe's searchers and score each label.

Every labelled row gets its transcript (``wrd``), ``label_source: pseudo``, the model's
confidence (``confidence.py``) and, where the input row has a reference transcript, the
label's WER against it (both normalised as the recipe scores). Rows go to a ``Journal`` a
batch at a time (``data.pseudo_labels``), so a killed run resumes where it stopped.
"""

from collections import Counter

import torch
from tqdm import tqdm

from whisper_finetuning.common.label_sources import LABEL_SOURCE, PSEUDO
from whisper_finetuning.data.audio import CHUNK_SECONDS, SAMPLE_RATE, AudioError, read_audio
from whisper_finetuning.data.pseudo_labels import REFERENCE_WER, number, word_error_rate
from whisper_finetuning.decoding.confidence import transcript_confidence
from whisper_finetuning.decoding.transcribe_rules import compression_ratio
from whisper_finetuning.evaluation.text import edit_distance
from whisper_finetuning.model.asr import EncoderStates


def label_rows(whisper, rows, journal, search, normalize, batch_size=8, language=None, bar=True):
    """Label the ``rows`` (``data.pseudo_labels.input_rows``) the journal lacks, in input
    order, ``batch_size`` at a time with ``search`` (a ``GreedySearch`` or ``BeamSearch``);
    ``language``: the prompt of rows without a ``language`` column. Returns the skipped
    rows' reasons counted (unreadable, empty or over 30 s audio)."""
    todo = [row for row in rows if row["ID"] not in journal.labelled]
    skipped = Counter()
    for start in tqdm(range(0, len(todo), batch_size), desc="labelling", disable=not bar):
        batch, wavs = [], []
        for row in todo[start : start + batch_size]:
            try:
                wav = read_audio(row["path"])
            except AudioError:
                skipped["unreadable audio"] += 1
                continue
            if len(wav) == 0 or len(wav) > CHUNK_SECONDS * SAMPLE_RATE:
                skipped["empty audio" if len(wav) == 0 else "audio over 30 s"] += 1
                continue
            batch.append(row)
            wavs.append(wav)
        if batch:
            journal.add(_label_batch(whisper, batch, wavs, search, normalize, language))
    return skipped


@torch.no_grad()
def _label_batch(whisper, rows, wavs, search, normalize, language):
    """The journal rows of one batch."""
    device = next(whisper.parameters()).device
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float32)
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
    frozen = whisper.encode_frozen_by_window(padded, lengths / lengths.max())
    states = EncoderStates([(r, whisper.encode_trainable(out)) for r, out in frozen])
    prompts = [whisper.prompt(row.get("language") or language) for row in rows]
    hyps, _ = search(whisper, states, torch.tensor(prompts, device=device))
    confidence = transcript_confidence(whisper, states, prompts, hyps)
    labelled = []
    for row, wav, hyp, (mean_logprob, no_speech) in zip(rows, wavs, hyps, confidence, strict=True):
        text = whisper.decode_text(hyp)
        reference = (row.get("wrd") or "").strip()
        row_language = row.get("language") or language
        wer = ""
        if reference:
            ref_words = normalize(reference, row_language).split()
            hyp_words = normalize(text, row_language).split()
            wer = word_error_rate(edit_distance(ref_words, hyp_words), len(ref_words))
        labelled.append(
            {
                **row,
                "duration": f"{len(wav) / SAMPLE_RATE:.3f}",
                "wrd": text,
                LABEL_SOURCE: PSEUDO,
                "mean_logprob": number(mean_logprob),
                "no_speech_prob": number(no_speech),
                "compression_ratio": number(compression_ratio(text)),
                REFERENCE_WER: wer,
            }
        )
    return labelled
