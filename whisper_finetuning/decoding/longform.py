"""Long-form evaluation: recordings over 30 s decoded the way Whisper is used, and scored.

``transcribe`` is openai/whisper's ``transcribe`` loop (``whisper/transcribe.py``): the
recording is read in 30 s windows; each window is decoded with timestamps, prompted with the
text decoded so far (``condition_on_previous_text``; reset after a window decoded above
temperature 0.5, as openai does); the window's closed segments are kept, and the next window
starts at the last closed segment's end timestamp, or 30 s on when the window ended with a
single timestamp, had no pair of timestamps, or was skipped as no speech. With ``rules``
(``transcribe_rules.TranscribeRules``), each window has openai's temperature fallback and
no-speech skip (``best_of`` samples above temperature 0). Not reproduced: word timestamps.
Each window's features are computed from the window alone (openai computes one spectrogram
for the whole recording; the two differ only in the per-window loudness clamp).

``evaluate`` decodes a long-form manifest (``ID, duration, wav, wrd``, optional ``segments``:
a JSON list of ``[start, end, text]`` in seconds) and writes, through ``scoring.Scorer``,
``summary_longform_NAME.json`` etc. with the WER, and, for recordings with segments, the
mean absolute boundary error: each reference segment start (end) is matched to the nearest
hypothesis segment start (end); the mean distance in seconds over all reference boundaries.
``score_rows`` decodes a test set's rows over 30 s the same way (``decode_rows``), into the
scorer of the set's other rows (``utterances_NAME.jsonl``, marked ``longform``).
"""

import json
import logging
import os

import torch

from whisper_finetuning.common.files import write_json, write_text
from whisper_finetuning.data.audio import CHUNK_SECONDS, SAMPLE_RATE, read_audio
from whisper_finetuning.data.examples import Segment
from whisper_finetuning.data.manifests import has_no_rows, load_manifest, resolve_languages
from whisper_finetuning.decoding.search import greedy_attempts, search_by_rules
from whisper_finetuning.evaluation.scoring import Scorer
from whisper_finetuning.model.vocabulary import TIME_PRECISION

logger = logging.getLogger(__name__)

HOP_SAMPLES = 160  # one spectrogram frame: 10 ms
WINDOW_FRAMES = CHUNK_SECONDS * SAMPLE_RATE // HOP_SAMPLES  # 3000
FRAMES_PER_TIMESTAMP = round(TIME_PRECISION * SAMPLE_RATE / HOP_SAMPLES)  # openai's input_stride


class Transcription:
    """openai/whisper's long-form loop over one recording of ``num_samples`` samples, one
    window at a time: ``window()`` says what to decode next, ``accept(tokens)`` takes the
    window's tokens (with timestamps, without prompt or end of text) and seeks on."""

    def __init__(self, num_samples, timestamp_begin, condition_on_previous_text=True):
        self.content_frames = num_samples // HOP_SAMPLES
        self.timestamp_begin = timestamp_begin
        self.condition_on_previous_text = condition_on_previous_text
        self.seek, self.all_tokens, self.prompt_reset_since = 0, [], 0
        self.segments, self.windows = [], 0  # [(start s, end s, tokens)], windows decoded

    @property
    def done(self):
        """Whether the whole recording has been read."""
        return self.seek >= self.content_frames

    @property
    def previous(self):
        """The prompt's previous tokens: everything decoded since the last reset."""
        return self.all_tokens[self.prompt_reset_since :]

    def window(self):
        """The next window's first and end sample."""
        size = min(WINDOW_FRAMES, self.content_frames - self.seek)
        return self.seek * HOP_SAMPLES, (self.seek + size) * HOP_SAMPLES

    def accept(self, tokens, temperature=0.0):
        """Cut the window's tokens (decoded at ``temperature``) into segments and seek as
        openai's ``transcribe`` does; no tokens (no speech) pass the window over."""
        begin = self.timestamp_begin
        time_offset = self.seek * HOP_SAMPLES / SAMPLE_RATE
        segment_size = min(WINDOW_FRAMES, self.content_frames - self.seek)
        self.windows += 1
        if not tokens:
            self.seek += segment_size
            return
        is_timestamp = [t >= begin for t in tokens]
        single_timestamp_ending = is_timestamp[-2:] == [False, True]
        consecutive = [
            i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]
        ]
        current = []
        if consecutive:
            slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
            last_slice = 0
            for current_slice in slices:
                sliced = tokens[last_slice:current_slice]
                start = time_offset + (sliced[0] - begin) * TIME_PRECISION
                current.append((start, time_offset + (sliced[-1] - begin) * TIME_PRECISION, sliced))
                last_slice = current_slice
            if single_timestamp_ending:
                self.seek += segment_size
            else:  # the unfinished segment is read again from the last timestamp on
                self.seek += (tokens[last_slice - 1] - begin) * FRAMES_PER_TIMESTAMP
        else:
            duration = segment_size * HOP_SAMPLES / SAMPLE_RATE
            timestamps = [t for t in tokens if t >= begin]
            if timestamps and timestamps[-1] != begin:
                duration = (timestamps[-1] - begin) * TIME_PRECISION
            current.append((time_offset, time_offset + duration, tokens))
            self.seek += segment_size
        current = [(s, e, toks) for s, e, toks in current if s != e and min(toks) < begin]
        self.segments += current
        self.all_tokens += [t for _, _, toks in current for t in toks]
        if not self.condition_on_previous_text or temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)


def transcribe(decode_window, num_samples, timestamp_begin, condition_on_previous_text=True):
    """openai/whisper's long-form loop over one recording (``Transcription``).

    ``decode_window(start, end, previous)`` decodes samples ``start:end`` (padded to 30 s)
    with timestamps, prompted with the token list ``previous``: (tokens, temperature).
    Returns ``[(start s, end s, tokens)]`` per segment, in order (instantaneous or empty
    segments dropped), and the number of windows decoded.
    """
    transcription = Transcription(num_samples, timestamp_begin, condition_on_previous_text)
    while not transcription.done:
        transcription.accept(*decode_window(*transcription.window(), transcription.previous))
    return transcription.segments, transcription.windows


def transcribe_together(decode_windows, transcriptions):
    """Advance several recordings' transcriptions to their ends; at each round, their next
    windows that share a prompt are decoded as one batch:
    ``decode_windows([(index, start, end), ...], previous)`` returns their (tokens,
    temperature)."""
    while any(not t.done for t in transcriptions):
        by_prompt = {}
        for index, transcription in enumerate(transcriptions):
            if not transcription.done:
                by_prompt.setdefault(tuple(transcription.previous), []).append(index)
        for previous, members in by_prompt.items():
            requests = [(i, *transcriptions[i].window()) for i in members]
            decoded = decode_windows(requests, list(previous))
            for i, (tokens, temperature) in zip(members, decoded, strict=True):
                transcriptions[i].accept(tokens, temperature)


class WindowDecoder:
    """Decodes windows of recordings with a ``WhisperASR``: greedy, with timestamps, in
    batches of at most ``batch_size`` windows, each padded to 30 s and prompted in its
    recording's language (``languages``; default: the model's); with ``rules``, under
    openai's ``transcribe`` rules."""

    def __init__(
        self,
        whisper,
        wavs,
        max_new_tokens=None,
        loop_stop=None,
        batch_size=8,
        languages=None,
        rules=None,
    ):
        self.whisper, self.wavs, self.rules = whisper, wavs, rules
        self.languages = languages or [None] * len(wavs)
        self.max_new_tokens, self.loop_stop, self.batch_size = max_new_tokens, loop_stop, batch_size
        self.looped = [False] * len(wavs)

    @torch.no_grad()
    def __call__(self, requests, previous):
        """The (tokens, temperature) of windows ``[(recording index, start, end), ...]``."""
        whisper = self.whisper
        device = next(whisper.parameters()).device
        found = []
        for first in range(0, len(requests), self.batch_size):
            batch = requests[first : first + self.batch_size]
            windows = torch.zeros(len(batch), CHUNK_SECONDS * SAMPLE_RATE, device=device)
            for row, (index, start, end) in enumerate(batch):
                windows[row, : end - start] = self.wavs[index][start:end]
            encoder_out = whisper.encode(whisper.features(windows))
            prompts = [
                whisper.prompt(self.languages[index], timestamps=True, previous=previous)
                for index, _, _ in batch
            ]
            attempts = self._decode(encoder_out, prompts)
            for (index, _, _), attempt in zip(batch, attempts, strict=True):
                self.looped[index] = self.looped[index] or attempt.looped
            found += [(attempt.tokens, attempt.temperature) for attempt in attempts]
        return found

    def _decode(self, encoder_out, prompts):
        """The windows' ``Attempt``s: greedy at temperature 0, or under the rules."""

        def greedy(out, rows_prompts):
            return greedy_attempts(
                self.whisper,
                out,
                self.max_new_tokens,
                self.loop_stop,
                rows_prompts,
                timestamps=True,
                no_speech=self.rules is not None,
            )

        if self.rules is None:
            return greedy(encoder_out, prompts)
        return search_by_rules(
            self.whisper,
            encoder_out,
            prompts,
            self.rules,
            greedy,
            self.max_new_tokens,
            self.loop_stop,
            timestamps=True,
        )


def boundary_errors(reference, hypothesis):
    """Distances (s) from each reference segment's start and end to the nearest hypothesis
    segment's start and end (empty without hypothesis segments)."""
    if not hypothesis:
        return []
    errors = []
    for segment in reference:
        errors.append(min(abs(segment.start - h.start) for h in hypothesis))
        errors.append(min(abs(segment.end - h.end) for h in hypothesis))
    return errors


def reference_segments(row):
    """A manifest row's reference segments (column ``segments``), or None."""
    raw = row.get("segments", "")
    if not raw:
        return None
    return [Segment(float(start), float(end), text) for start, end, text in json.loads(raw)]


def evaluate(
    whisper,
    csv_path,
    data_folder,
    normalize,
    folder,
    name,
    condition_on_previous_text=True,
    max_new_tokens=None,
    loop_stop=None,
    model=None,
    group_columns=(),
    batch_size=8,
    rules=None,
):
    """Decode and score one long-form manifest into ``folder`` (files ``*_longform_NAME``);
    returns the summary (None for a manifest without rows). Recordings are decoded together,
    in batches of ``batch_size`` windows that share the previous text, each prompted in its
    recording's language (column ``language``, else the model's); with ``rules``, under
    openai's ``transcribe`` rules."""
    if has_no_rows(csv_path):  # e.g. a demo corpus too small for a 40 s recording
        logger.warning("long-form set %s has no recordings: nothing decoded", csv_path)
        return None
    dataset = resolve_languages(load_manifest(csv_path, data_folder), name, whisper)
    ids = list(dataset.data_ids)
    rows = [dataset.data[utt_id] for utt_id in ids]
    decoded = decode_rows(
        whisper, rows, condition_on_previous_text, max_new_tokens, loop_stop, batch_size, rules
    )
    scorer = Scorer(normalize, group_columns)
    errors = []
    timing = dict.fromkeys(
        ("reference_segments", "hypothesis_segments", "recordings_without_segments"), 0
    )
    for utt_id, row, (hypothesis, extra) in zip(ids, rows, decoded, strict=True):
        reference = reference_segments(row)
        if reference is not None:
            recording_errors = boundary_errors(reference, hypothesis)
            extra["boundary_mae"] = _mean(recording_errors)
            errors += recording_errors
            timing["reference_segments"] += len(reference)
            timing["hypothesis_segments"] += len(hypothesis)
            timing["recordings_without_segments"] += not hypothesis
        _append(scorer, utt_id, row, hypothesis, extra, group_columns)
    timing.update(boundary_mae=_mean(errors), n_boundaries=len(errors))
    return scorer.write(folder, f"longform_{name}", model=model, extra={"timestamps": timing})


def settings(hparams):
    """The long-form loop's settings in a run's hparams: ``decode_rows``' keyword arguments
    (the test search's transcribe rules, the test batch size in windows)."""
    return {
        "condition_on_previous_text": hparams["longform_condition_on_previous_text"],
        "max_new_tokens": hparams["decode_max_tokens"],
        "loop_stop": hparams["loop_stop"],
        "batch_size": hparams["test_batch_size"],
        "rules": hparams["test_search"].rules,
    }


def decode_rows(
    whisper,
    rows,
    condition_on_previous_text=True,
    max_new_tokens=None,
    loop_stop=None,
    batch_size=8,
    rules=None,
):
    """Decode manifest rows' recordings (``wav``, ``language``) together with the long-form
    loop (``WindowDecoder``, ``transcribe_together``): per row, its hypothesis segments and
    ``{"segments", "windows", "loop_stopped"}`` (the segments rounded to 10 ms)."""
    whisper.eval()
    wavs = [read_audio(row["wav"]) for row in rows]
    languages = [row["language"] for row in rows]
    decoder = WindowDecoder(whisper, wavs, max_new_tokens, loop_stop, batch_size, languages, rules)
    transcriptions = [
        Transcription(len(wav), whisper.timestamp_begin, condition_on_previous_text) for wav in wavs
    ]
    transcribe_together(decoder, transcriptions)
    decoded = []
    for transcription, looped in zip(transcriptions, decoder.looped, strict=True):
        hypothesis = [
            Segment(s, e, whisper.decode_text(toks)) for s, e, toks in transcription.segments
        ]
        extra = {
            "segments": [[round(s.start, 2), round(s.end, 2), s.text] for s in hypothesis],
            "windows": transcription.windows,
            "loop_stopped": looped,
        }
        decoded.append((hypothesis, extra))
    return decoded


def hypothesis_text(hypothesis):
    """A recording's transcript: its hypothesis segments' texts joined by spaces."""
    return " ".join(s.text for s in hypothesis)


def score_rows(scorer, whisper, rows, group_columns=(), **decoding):
    """Decode a test set's rows over 30 s (``{ID: row}``) long-form (``decode_rows`` with
    ``decoding``) into its ``scorer``, each marked ``longform: true``."""
    if not rows:
        return
    decoded = decode_rows(whisper, list(rows.values()), **decoding)
    for (utt_id, row), (hypothesis, extra) in zip(rows.items(), decoded, strict=True):
        _append(scorer, utt_id, row, hypothesis, {"longform": True, **extra}, group_columns)


def _append(scorer, utt_id, row, hypothesis, extra, group_columns):
    """Score one decoded recording: its transcript against the row's, grouped by the row's
    ``group_columns``, with its per-utterance ``extra`` fields."""
    groups = {column: [row[column]] for column in group_columns if column in row}
    extra = {key: [value] for key, value in extra.items()}
    text = hypothesis_text(hypothesis)
    scorer.append([utt_id], [text], [row["wrd"]], groups, [row["duration"]], extra)


def _mean(values):
    """The mean, or None for no values."""
    return sum(values) / len(values) if values else None


def write_comparison(output_folder, names):
    """Zero-shot vs fine-tuned long-form WER and boundary error: ``longform_results.json``
    and ``.txt`` in ``output_folder``."""
    results = {}
    for label, folder in (
        ("zero_shot", os.path.join(output_folder, "zero_shot")),
        ("fine_tuned", output_folder),
    ):
        for name in names:
            with open(os.path.join(folder, f"summary_longform_{name}.json")) as f:
                summary = json.load(f)
            results.setdefault(name, {})[label] = {
                "wer": summary["wer"],
                "wer_ci95": summary["wer_ci95"],
                "boundary_mae": summary["timestamps"]["boundary_mae"],
                "loop_stopped": summary["loop_stopped"],
            }
    write_json(os.path.join(output_folder, "longform_results.json"), results)
    lines = [f"{'long-form set':<20}{'':<12}{'WER %':>8}{'boundary MAE s':>16}{'loops':>7}"]
    for name, by_model in results.items():
        for label, r in by_model.items():
            mae = "-" if r["boundary_mae"] is None else f"{r['boundary_mae']:.3f}"
            lines.append(f"{name:<20}{label:<12}{r['wer']:>8.2f}{mae:>16}{r['loop_stopped']:>7}")
    table = "\n".join(lines)
    write_text(os.path.join(output_folder, "longform_results.txt"), table + "\n")
    logger.info("long form, zero-shot vs fine-tuned:\n%s", table)
    return results
