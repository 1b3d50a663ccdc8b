"""The same small corpus in every data source the recipe reads: a folder of audio with
``transcripts.tsv`` (the CSV path), a Hugging Face dataset (``save_to_disk``, parquet files,
an ``audiofolder``), Lhotse cuts and tar shards, each built with its real library."""

import csv
import shutil

import numpy as np
import soundfile as sf

# ID, seconds, rate, channels, split: two clips at other rates (one stereo) are resampled and
# downmixed on reading, in every source alike.
CLIPS = [
    ("u0", 1.2, 16000, 1, "train"),
    ("u1", 0.9, 44100, 2, "train"),
    ("u2", 1.5, 8000, 1, "train"),
    ("u3", 1.1, 16000, 1, "train"),
    ("u4", 0.8, 16000, 1, "train"),
    ("u5", 1.3, 16000, 1, "train"),
    ("u6", 1.0, 16000, 1, "valid"),
    ("u7", 1.4, 16000, 1, "valid"),
    ("u8", 0.7, 16000, 1, "test"),
    ("u9", 1.2, 16000, 1, "test"),
]
WORDS = "open the window please turn left at the bridge snow covered hills".split()
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
LHOTSE_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
SOURCES = ("hf_saved", "hf_parquet", "audiofolder", "lhotse", "shards")


def make_corpus(folder):
    """Noise clips with transcripts, speakers, gender and language; ``transcripts.tsv``
    describes them for ``dataset: tsv_folder``. Returns the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0)
    rows = []
    for index, (utt_id, seconds, rate, channels, split) in enumerate(CLIPS):
        audio = 0.1 * noise.standard_normal((round(seconds * rate), channels))
        sf.write(folder / f"{utt_id}.wav", audio.astype(np.float32), rate, subtype="PCM_16")
        text = " ".join(WORDS[(index + k) % len(WORDS)] for k in range(3 + index % 3))
        rows.append(
            {
                "path": f"{utt_id}.wav",
                "text": text,
                "speaker": f"spk{index % 3}",
                "gender": "female" if index % 2 else "male",
                "language": "en",
                "split": split,
            }
        )
    with open(folder / "transcripts.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def hf_splits(rows, audio_folder):
    """The corpus as a ``datasets.DatasetDict`` with the audio's bytes embedded."""
    from datasets import Audio, Dataset, DatasetDict

    def split(name):
        chosen = [r for r in rows if r["split"] == name]
        return Dataset.from_dict(
            {
                "audio": [
                    {"bytes": (audio_folder / r["path"]).read_bytes(), "path": r["path"]}
                    for r in chosen
                ],
                "sentence": [r["text"] for r in chosen],
                "speaker_id": [r["speaker"] for r in chosen],
                "gender": [r["gender"] for r in chosen],
                "language": [r["language"] for r in chosen],
            }
        ).cast_column("audio", Audio())

    return DatasetDict({hf: split(name) for name, hf in HF_SPLITS.items()})


def write_hf_saved(rows, audio_folder, folder):
    """``save_to_disk`` of the corpus."""
    hf_splits(rows, audio_folder).save_to_disk(str(folder))
    return folder


def write_hf_parquet(rows, audio_folder, folder):
    """The corpus as Hub-style parquet files, ``data/<split>-00000-of-00001.parquet``."""
    (folder / "data").mkdir(parents=True)
    for name, split in hf_splits(rows, audio_folder).items():
        split.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return folder


def write_audiofolder(rows, audio_folder, folder):
    """An audiofolder: ``<split>/metadata.csv`` (``file_name``, ``transcription``, ...)."""
    for name, hf in HF_SPLITS.items():
        (folder / hf).mkdir(parents=True)
        chosen = [r for r in rows if r["split"] == name]
        with open(folder / hf / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "transcription", "speaker_id", "gender", "language"])
            for r in chosen:
                shutil.copy(audio_folder / r["path"], folder / hf / r["path"])
                writer.writerow([r["path"], r["text"], r["speaker"], r["gender"], r["language"]])
    return folder


def write_lhotse(rows, audio_folder, folder):
    """Lhotse ``cuts_<split>.jsonl.gz``: one recording, cut and supervision per clip."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    folder.mkdir(parents=True)
    for name, split in LHOTSE_SPLITS.items():
        cuts = []
        for r in (r for r in rows if r["split"] == name):
            utt_id = r["path"].removesuffix(".wav")
            recording = Recording.from_file(audio_folder / r["path"], recording_id=utt_id)
            supervision = SupervisionSegment(
                id=utt_id,
                recording_id=utt_id,
                start=0,
                duration=recording.duration,
                text=r["text"],
                speaker=r["speaker"],
                gender=r["gender"],
                language=r["language"],
            )
            cuts.append(
                MonoCut(
                    id=utt_id,
                    start=0,
                    duration=recording.duration,
                    channel=recording.channel_ids if recording.num_channels > 1 else 0,
                    recording=recording,
                    supervisions=[supervision],
                )
            )
        CutSet.from_cuts(cuts).to_file(folder / f"cuts_{split}.jsonl.gz")
    return folder


def write_all_shards(csv_manifests, audio_folder, folder):
    """Tar shards written by ``write_shards`` from the CSV path's manifests."""
    from whisper_finetuning.data.prepare.shards import write_shards

    write_shards(csv_manifests, audio_folder, folder)
    return folder


def build_sources(root, rows, audio_folder, csv_manifests):
    """{source: (dataset, data_folder)} of every source holding the corpus."""
    return {
        "hf_saved": ("hf", write_hf_saved(rows, audio_folder, root / "hf_saved")),
        "hf_parquet": ("hf", write_hf_parquet(rows, audio_folder, root / "hf_parquet")),
        "audiofolder": ("hf", write_audiofolder(rows, audio_folder, root / "audiofolder")),
        "lhotse": ("lhotse", write_lhotse(rows, audio_folder, root / "lhotse")),
        "shards": ("shards", write_all_shards(csv_manifests, audio_folder, root / "shards")),
    }
