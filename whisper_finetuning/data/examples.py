"""Training examples in Whisper's own formats: timestamps, long-form, previous text.

Whisper was trained on 30 s windows whose targets carry segment timestamps
(``<|0.00|> text<|2.48|><|2.48|> more<|5.10|>``, the prompt without ``<|notimestamps|>``) and
often a preceding text (``<|startofprev|> ... <|startoftranscript|>``). Fine-tuning only on
short clips with ``<|notimestamps|>`` teaches it to forget both. ``TrainingExamples`` turns a
share of the training rows back into those formats:

* ``timestamp_probability``: the row's targets carry timestamps, one segment per utterance
  (start 0, end its duration);
* ``longform_probability``: the row starts a long-form example: it and the utterances that
  follow it in manifest order from the same speaker (``spk_id``; without that column, the
  rows that follow it) in the same language, joined with short silent gaps, as many as fit
  into 30 s and the decoder's positions, with timestamp targets;
* ``condition_on_prev_probability``: the prompt holds the text of the utterance before it
  (same speaker, manifest order) after ``<|startofprev|>``; those tokens are never trained on.

A non-speech row (empty transcript) trains as Whisper was trained on audio without speech:
decoder input ``<|startoftranscript|><|nospeech|>``, targets ``<|nospeech|><|endoftext|>``,
so the loss raises the probability of ``<|nospeech|>`` right after the start of transcript,
the very probability openai's ``transcribe`` (and transformers' ``generate``) compare with
``no_speech_threshold``. It is never joined, timestamped or conditioned on previous text.
With ``nonspeech_target`` off (objective mwer, whose searches need every row's plain prompt),
it trains as an empty transcript: the plain prompt, then end of text.

Two more sources keep what Whisper knew (docs/nonspeech.md):

* ``nonspeech_probability``: the row is replaced by non-speech audio with the no-speech
  target: a clip of ``nonspeech_clips`` (a manifest of non-speech rows; cut to the replaced
  row's duration) or, without them, a generated one (``data.nonspeech``) as long as the row;
* ``replay_rows`` (a keep set) fill ``replay_slots``, extra training rows each of which
  holds a replay row this epoch: the epoch's rows are the replay rows in an order drawn from
  (seed, epoch, replay ID), one per slot (cycling when there are more slots than rows). A
  replay row trains as a plain transcript in its own language (non-speech: the no-speech
  target), never replaced, joined, timestamped or conditioned on previous text.

Every choice (and gap) is drawn from a hash of (seed, epoch, utterance ID), never from a
random state, so an epoch's examples are the same in every process, in every data loader
worker and after a kill and resume.
"""

import hashlib
import itertools
from dataclasses import dataclass

import torch

from whisper_finetuning.data import nonspeech as generated
from whisper_finetuning.data.audio import CHUNK_SECONDS, SAMPLE_RATE, read_audio
from whisper_finetuning.evaluation.text import is_nonspeech
from whisper_finetuning.model.vocabulary import TIME_PRECISION

MIN_GAP_SECONDS, MAX_GAP_SECONDS = 0.1, 0.8  # silence between joined utterances


@dataclass(frozen=True)
class Segment:
    """Text spoken from ``start`` to ``end`` seconds."""

    start: float
    end: float
    text: str


def timestamp_index(seconds):
    """The index of the timestamp token nearest ``seconds`` (0.02 s steps)."""
    return round(seconds / TIME_PRECISION)


def timestamp_targets(segments, encode_text, timestamp_begin):
    """Whisper's timestamped transcript: ``<|start|> text <|end|>`` per segment (no EOT)."""
    tokens = []
    for segment in segments:
        tokens.append(timestamp_begin + timestamp_index(segment.start))
        tokens += encode_text(segment.text)
        tokens.append(timestamp_begin + timestamp_index(segment.end))
    return tokens


def segments_from_tokens(tokens, timestamp_begin, decode_text, offset=0.0):
    """Segments of a timestamped token list: each text between a start and an end timestamp.

    Tokens outside a timestamp pair (an unfinished last segment) are dropped; ``offset`` is
    added to every time (a window's start in a recording).
    """
    segments, start, text = [], None, []
    for token in tokens:
        if token < timestamp_begin:
            text.append(token)
            continue
        time = offset + (token - timestamp_begin) * TIME_PRECISION
        if start is None:
            start, text = time, []
        else:
            segments.append(Segment(round(start, 2), round(time, 2), decode_text(text)))
            start = None
    return segments


@dataclass(frozen=True)
class Plan:
    """What one training row becomes in one epoch."""

    ids: tuple  # the utterances it joins (one unless long-form)
    offsets: tuple  # each one's start in seconds
    timestamps: bool
    previous: str | None  # the preceding utterance's text when conditioned on it
    generated: int | None = None  # the generated non-speech clip replacing the row, if any
    seconds: float | None = None  # the replacing non-speech audio's length (None: whole)


class TrainingExamples:
    """Decides, per (seed, epoch, utterance ID), what each training row becomes (see the
    module docstring), and builds its audio and token sequences.

    ``rows`` are the manifest's rows in manifest order (``{id: row}``); ``whisper`` a
    ``WhisperASR`` (its prompt, tokenizer and positions are used).
    """

    def __init__(
        self,
        rows,
        whisper,
        seed,
        timestamp_probability=0.0,
        longform_probability=0.0,
        condition_on_prev_probability=0.0,
        nonspeech_target=True,
        nonspeech_probability=0.0,
        nonspeech_clips=None,
        replay_rows=None,
        replay_slots=(),
    ):
        self.whisper, self.seed = whisper, seed
        self.clips = sorted(nonspeech_clips or ())  # keys in rows; none: generated clips
        if nonspeech_probability > 0 and not self.clips:
            generated.check_babble_tool()
        self.replay = list(replay_rows or ())  # replay rows' keys, in manifest order
        self.slots = {slot: k for k, slot in enumerate(replay_slots)}
        self.rows = {**rows, **(nonspeech_clips or {}), **(replay_rows or {})}
        self.nonspeech = {u for u, row in self.rows.items() if is_nonspeech(row["wrd"])}
        self.nonspeech_target = nonspeech_target
        self.nonspeech_probability = nonspeech_probability
        self._replay_order = None  # (epoch, replay keys in this epoch's order)
        self.timestamp_probability = timestamp_probability
        self.longform_probability = longform_probability
        self.condition_on_prev_probability = condition_on_prev_probability
        self.epoch = 0
        self.speakers = {}  # each speaker's utterances in manifest order
        self.place = {}  # utterance -> (its speaker's list, its index there)
        for utt_id, row in rows.items():
            ids = self.speakers.setdefault(row.get("spk_id"), [])
            self.place[utt_id] = (ids, len(ids))
            ids.append(utt_id)

    @property
    def active(self):
        """Whether any row can become something other than a plain transcript."""
        probabilities = (
            self.timestamp_probability,
            self.longform_probability,
            self.condition_on_prev_probability,
            self.nonspeech_probability,
        )
        if any(p > 0 for p in probabilities) or self.slots:
            return True
        return bool(self.nonspeech_target and self.nonspeech)

    @property
    def changes_audio(self):
        """Whether a row's audio can be other than its own file's (joined, replaced, replayed):
        then no per-utterance encoder cache applies."""
        return self.longform_probability > 0 or self.nonspeech_probability > 0 or bool(self.slots)

    def set_epoch(self, epoch):
        """Draw this epoch's choices (call before the epoch's data loader starts)."""
        self.epoch = epoch

    def draw(self, utt_id, what):
        """A number in [0, 1) fixed by (seed, epoch, utterance, what it decides)."""
        key = f"{self.seed}:{self.epoch}:{utt_id}:{what}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8]) / 2**64

    def plan(self, utt_id):
        """What row ``utt_id`` becomes this epoch."""
        if utt_id in self.slots:
            return Plan((self.replayed(utt_id),), (0.0,), False, None)
        if utt_id in self.nonspeech:
            return Plan((utt_id,), (0.0,), False, None)
        if self.draw(utt_id, "nonspeech") < self.nonspeech_probability:
            return self._nonspeech_plan(utt_id)
        previous = None
        ids, index = self.place[utt_id]
        if index > 0 and self.draw(utt_id, "previous") < self.condition_on_prev_probability:
            previous = self.rows[ids[index - 1]]["wrd"].strip() or None  # none after silence
            alone = Plan((utt_id,), (0.0,), True, previous)
            if self.positions(alone) > self.whisper.max_positions:
                previous = None  # no room for the previous text
        if self.draw(utt_id, "longform") < self.longform_probability:
            return Plan(*self._joined(utt_id, previous), True, previous)
        timestamps = self.draw(utt_id, "timestamps") < self.timestamp_probability
        return Plan((utt_id,), (0.0,), timestamps, previous)

    def replaced(self, utt_ids):
        """Those of ``utt_ids`` replaced by non-speech audio this epoch."""
        return [u for u in utt_ids if self.plan(u).seconds is not None]

    def _nonspeech_plan(self, utt_id):
        """Row ``utt_id`` replaced by non-speech audio: a clip drawn from ``nonspeech_clips``
        (or generated), as long as the row (a shorter clip: whole)."""
        seconds = float(self.rows[utt_id]["duration"])
        pick = self.draw(utt_id, "nonspeech clip")
        if not self.clips:
            return Plan(
                (utt_id,), (0.0,), False, None, int(pick * generated.GENERATED_CLIPS), seconds
            )
        clip = self.clips[int(pick * len(self.clips))]
        return Plan((clip,), (0.0,), False, None, None, seconds)

    def replayed(self, slot):
        """The replay row replay slot ``slot`` holds this epoch."""
        if self._replay_order is None or self._replay_order[0] != self.epoch:
            order = sorted(self.replay, key=lambda key: (self.draw(key, "replay"), key))
            self._replay_order = (self.epoch, order)
        order = self._replay_order[1]
        return order[self.slots[slot] % len(order)]

    def _joined(self, utt_id, previous):
        """The utterances from ``utt_id`` on that fit one window, and their start times."""
        ids, offsets = [utt_id], [0.0]
        end = float(self.rows[utt_id]["duration"])
        positions = self.positions(Plan((utt_id,), (0.0,), True, previous))
        speaker_ids, index = self.place[utt_id]
        for k, next_id in enumerate(itertools.islice(speaker_ids, index + 1, None)):
            gap = MIN_GAP_SECONDS + (MAX_GAP_SECONDS - MIN_GAP_SECONDS) * self.draw(utt_id, k)
            start = round(timestamp_index(end + gap) * TIME_PRECISION, 2)  # on the grid
            if self.language(next_id) != self.language(utt_id) or next_id in self.nonspeech:
                break  # one prompt per window; speech only
            end_next = start + float(self.rows[next_id]["duration"])
            positions += len(self.whisper.encode_text(self.rows[next_id]["wrd"])) + 2
            if end_next > CHUNK_SECONDS or positions > self.whisper.max_positions:
                break
            ids.append(next_id)
            offsets.append(start)
            end = end_next
        return tuple(ids), tuple(offsets)

    def segments(self, plan):
        """The plan's segments: one per utterance, from its start to its end."""
        return [
            Segment(offset, offset + float(self.rows[utt_id]["duration"]), self.rows[utt_id]["wrd"])
            for utt_id, offset in zip(plan.ids, plan.offsets, strict=True)
        ]

    def language(self, utt_id):
        """The row's language (manifest column ``language``; None: the model's default)."""
        return self.rows[utt_id].get("language")

    def tokens(self, plan):
        """(decoder input, targets, prompt length): input = prompt (in the first row's
        language) + transcript, targets = transcript + EOT; the loss reads the targets from the
        prompt's last position on. A non-speech row: ``<|startoftranscript|><|nospeech|>``,
        targets ``<|nospeech|>`` + EOT, prompt length 1 (see the module docstring)."""
        whisper = self.whisper
        if self.nonspeech_target and self.is_nonspeech(plan):
            start, no_speech = whisper.start_of_transcript, whisper.no_speech
            return [start, no_speech], [no_speech, whisper.eot], 1
        previous = whisper.encode_text(plan.previous) if plan.previous else ()
        prompt = whisper.prompt(
            self.language(plan.ids[0]), timestamps=plan.timestamps, previous=previous
        )
        if plan.timestamps:
            transcript = timestamp_targets(
                self.segments(plan), whisper.encode_text, whisper.timestamp_begin
            )
        else:
            transcript = whisper.encode_text(self.text(plan))
        return prompt + transcript, transcript + [whisper.eot], len(prompt)

    def positions(self, plan):
        """Decoder positions the plan takes: prompt, transcript and end of text."""
        tokens_in, _, _ = self.tokens(plan)
        return len(tokens_in) + 1

    def is_nonspeech(self, plan):
        """Whether the plan is non-speech audio (a non-speech row or a replacement)."""
        return plan.generated is not None or plan.ids[0] in self.nonspeech

    def text(self, plan):
        """The plan's transcript as plain text."""
        if plan.generated is not None:
            return ""
        return " ".join(self.rows[utt_id]["wrd"].strip() for utt_id in plan.ids)

    def audio(self, plan):
        """The plan's waveform: its utterances at their offsets, silence between them (a
        replacing non-speech clip: at most ``plan.seconds`` of it)."""
        if plan.generated is not None:
            return torch.from_numpy(
                generated.generated_clip(self.seed, plan.generated, plan.seconds)
            )
        if len(plan.ids) == 1:
            wav = read_audio(self.rows[plan.ids[0]]["wav"])
            return wav if plan.seconds is None else wav[: round(plan.seconds * SAMPLE_RATE)]
        clips = [read_audio(self.rows[utt_id]["wav"]) for utt_id in plan.ids]
        starts = [round(offset * SAMPLE_RATE) for offset in plan.offsets]
        joined = torch.zeros(starts[-1] + len(clips[-1]))
        for start, clip in zip(starts, clips, strict=True):
            joined[start : start + len(clip)] = clip
        return joined


def row_prompts(tokens_bos, prompt_lens):
    """Each row's prompt (the first ``prompt_len`` tokens of its decoder input) as a
    ``[rows, length]`` tensor, where a search starts: every row's prompt must be equally long,
    as plain transcripts' are in every language."""
    lengths = {int(n) for n in prompt_lens}
    if len(lengths) != 1:
        raise ValueError(f"rows with prompts of different lengths {sorted(lengths)}: search apart")
    return tokens_bos[:, : lengths.pop()]


def align_to_targets(log_probs, prompt_lens, length):
    """Each row's log-probabilities from its prompt's last position on, ``length`` of them:
    position ``prompt_len - 1 + i`` predicts target ``i``, whatever the row's prompt length
    (the prompt, previous text included, is never trained on)."""
    starts = torch.as_tensor(prompt_lens, device=log_probs.device).long() - 1
    index = starts[:, None] + torch.arange(length, device=log_probs.device)[None]
    index = index.clamp(max=log_probs.shape[1] - 1)  # past a row's end: padding, masked out
    return log_probs.gather(1, index[..., None].expand(-1, -1, log_probs.shape[-1]))
