"""Non-speech test clips made apart from training, to measure how often a model writes words
where nobody speaks.

``nonspeech_probability`` trains on clips that numpy generates (``whisper_finetuning.data.
nonspeech``: coloured noise, tones, sweeps); these come from other generators, sox and
espeak-ng. Clip ``k`` is of kind ``KINDS[k % len(KINDS)]``, and its length and parameters are
fixed by a hash of (seed, k):

- babble: four espeak-ng voices speaking at once, reversed so that no word survives, peaking
  ``BABBLE_BELOW_SPEECH_DB`` below the speech clips: a crowd behind a wall;
- chords: sox's plucked strings, one chord struck again and again;
- hum: mains hum (50 or 60 Hz with two harmonics) over brown noise;
- room: near silence, pink noise far below speech, where Whisper is known to say "Thank you."

Each clip is a test manifest row with an empty transcript (its speaker the kind, its dialect
``nonspeech``): a non-speech row, which the recipe decodes and scores by its hallucination rate
(docs/nonspeech.md).
"""

import tempfile
from pathlib import Path

from whisper_finetuning.common.files import atomic_path
from whisper_finetuning.data.audio import SAMPLE_RATE, audio_duration
from whisper_finetuning.data.manifests import DATA_ROOT
from whisper_finetuning.data.prepare.synthesis import check_tools, fraction, run_tool

KINDS = ("babble", "chords", "hum", "room")
SECONDS = (3.0, 8.0)  # each clip's length lies in this range
BABBLE_VOICES = 4
BABBLE_SENTENCES = 3  # per voice: longer than the clip, which is cut from the middle
BABBLE_BELOW_SPEECH_DB = 25  # peak, against the speech clips' -1 dBFS
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 5, 9), (0, 4, 10))  # semitones above the root
HUM_HZ = (50, 60)
PEAK_DBFS = {"babble": -BABBLE_BELOW_SPEECH_DB, "chords": -12, "hum": -20, "room": -50}
SYNTH_RATE = 48000  # sox's pluck needs 44.1 to 48 kHz
PCM = ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]


def clip_id(index: int) -> str:
    """The ID of clip ``index``: ``nonspeech_007_hum``."""
    return f"nonspeech_{index:03d}_{KINDS[index % len(KINDS)]}"


def clip_seconds(seed: int, index: int) -> float:
    """The length of clip ``index``, in seconds (to the millisecond)."""
    low, high = SECONDS
    return round(low + (high - low) * fraction(seed, "nonspeech_test", index, "seconds"), 3)


def synth_effects(seed: int, index: int, seconds: float) -> list[str]:
    """The sox effects that make clip ``index`` of a kind other than babble from nothing, at
    ``SYNTH_RATE``."""
    kind = KINDS[index % len(KINDS)]

    def share(key):
        return fraction(seed, "nonspeech_test", index, key)

    if kind == "chords":
        root = 110 * 2 ** (int(share("root") * 24) / 12)  # A2 to G#4
        strike = 0.4 + 0.6 * share("strike")
        notes = [f"{root * 2 ** (step / 12):.2f}" for step in CHORDS[int(share("chord") * 4)]]
        synth = ["synth", f"{strike:.3f}", *(a for note in notes for a in ("pluck", note))]
        return [
            *synth,
            "remix",
            "-",
            "repeat",
            str(int(seconds / strike)),
            "trim",
            "0",
            str(seconds),
        ]
    if kind == "hum":
        hum = HUM_HZ[int(share("hum") * len(HUM_HZ))]
        sines = [a for k in (1, 2, 3) for a in ("sine", str(hum * k))]
        return ["synth", str(seconds), *sines, "brownnoise", "remix", "-"]
    return ["synth", str(seconds), "pinknoise"]


def babble_plan(seed, index, voices, sentences):
    """The ``(voice, text)`` of each of the babble's speakers: one of ``voices`` with a
    variant, speaking ``BABBLE_SENTENCES`` of ``sentences``."""
    speakers = []
    for speaker in range(BABBLE_VOICES):
        key = ("nonspeech_test", index, "speaker", speaker)
        voice = voices[int(fraction(seed, *key, "voice") * len(voices))]
        variant = VOICE_VARIANTS[int(fraction(seed, *key, "variant") * len(VOICE_VARIANTS))]
        first = int(fraction(seed, *key, "sentence") * len(sentences))
        text = " ".join(sentences[(first + k) % len(sentences)] for k in range(BABBLE_SENTENCES))
        speakers.append((f"{voice}+{variant}", text))
    return speakers


def synthesize_clip(seed, index, voices, sentences, path, tmp_dir):
    """Write clip ``index`` at ``path`` (16 kHz mono 16-bit PCM, made reproducibly: ``-R``,
    no dither)."""
    seconds = clip_seconds(seed, index)
    name = clip_id(index)
    kind = KINDS[index % len(KINDS)]
    # Resampled before the peak is set, so the file peaks at PEAK_DBFS exactly.
    level = ["rate", str(SAMPLE_RATE), "gain", "-n", str(PEAK_DBFS[kind])]
    if kind == "babble":
        speakers = []
        for k, (voice, text) in enumerate(babble_plan(seed, index, voices, sentences)):
            speakers.append(str(Path(tmp_dir) / f"{name}_{k}.wav"))
            run_tool(["espeak-ng", "-v", voice, "-w", speakers[-1], text], name)
        source = ["-m", *speakers]
        effects = ["reverse", "trim", "0.5", str(seconds)]  # past the first syllables
    else:
        source = ["-r", str(SYNTH_RATE), "-n"]
        effects = synth_effects(seed, index, seconds)
    with atomic_path(path) as partial:
        run_tool(["sox", "-R", "-D", "-V1", *source, *PCM, partial, *effects, *level], name)


def nonspeech_rows(data_folder, n_clips, seed, voices, sentences, language="english"):
    """The manifest rows of ``n_clips`` clips under ``data_folder/nonspeech``, making those
    that do not exist yet (babble: ``voices`` speaking ``sentences``), each prompted in
    ``language``."""
    data_folder = Path(data_folder)
    (data_folder / "nonspeech").mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(n_clips):
            name, kind = clip_id(index), KINDS[index % len(KINDS)]
            rel_wav = f"nonspeech/{name}.wav"
            if not (data_folder / rel_wav).is_file():
                check_tools()
                synthesize_clip(seed, index, voices, sentences, data_folder / rel_wav, tmp)
            duration = f"{audio_duration(data_folder / rel_wav):.3f}"
            rows.append(
                [name, duration, f"${DATA_ROOT}/{rel_wav}", kind, "nonspeech", language, ""]
            )
    return rows
