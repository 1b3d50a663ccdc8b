"""Knowledge distillation as distil-whisper does it: a student with fewer decoder layers learns
the transcripts (cross-entropy) and the teacher's token distribution (KL).

* ``student_decoder_layers: N`` keeps N maximally spaced decoder layers of the model being
  trained (``whisper_hub``; distil-whisper's ``linspace`` map: 2 of 32 are layers 0 and 31),
  so the student starts as a shallower copy of that model: to distil a fine-tuned run, export
  it (``export_hf``) and name the folder as both ``whisper_hub`` and ``teacher``.
* ``teacher: EXP_OR_MODEL`` (an experiment folder's selected checkpoint or a model) is teacher
  forced on each training batch's own prompts and transcripts; the loss becomes
  ``CE + distill_weight * KL`` with the KL between the teacher's and the student's token
  distributions at temperature ``distill_temperature``, times its square (Hinton et al.),
  computed by ``fast_loss`` from the same logits as the CE.
  With a frozen student encoder equal to the teacher's, the teacher's decoder reads the
  student's encoder states, so the encoder cache serves both.
"""

import torch

from whisper_finetuning.data.examples import align_to_targets
from whisper_finetuning.model.fast_loss import Distillation
from whisper_finetuning.model.student import DistillationError, keep_decoder_layers


class Distiller:
    """The frozen teacher of a run and its loss's settings."""

    def __init__(self, teacher, weight, temperature, student):
        if teacher.model.config.vocab_size != student.model.config.vocab_size:
            raise DistillationError("teacher and student must share a vocabulary")
        self.teacher, self.weight, self.temperature = teacher, weight, temperature  # on the CPU
        self.shares_encoder = student.encoder_frozen and _same_encoder(teacher, student)

    def teacher_hidden(self, states, tokens, token_lens, wavs=None, wav_lens=None):
        """The teacher's final decoder states for a batch's decoder inputs (projected in the
        loss): on the student's encoder states when they are the teacher's, else from the
        audio."""
        with torch.no_grad():
            if self.shares_encoder:
                padded = self.teacher.pad_tokens(tokens, token_lens)
                return states.rejoin(
                    [self.teacher.decoder_hidden(padded[rows], out) for rows, out in states.groups]
                )
            if wavs is None:
                raise DistillationError(
                    "the teacher's encoder differs from the student's frozen one: train with "
                    "encoder_cache: false so that the teacher hears the audio"
                )
            hidden, _ = self.teacher(wavs, wav_lens, tokens, token_lens, project=False)
            return hidden

    def targets(self, teacher_hidden, prompt_lens, length):
        """What the loss adds for the teacher's states over the decoder inputs (``fast_loss``
        computes its KL from the student's own logits): the states aligned with the targets
        as the student's are, and the teacher's projection."""
        aligned = align_to_targets(teacher_hidden, prompt_lens, length)
        projection = self.teacher.model.proj_out
        return Distillation(aligned, projection, self.weight, self.temperature)


def _same_encoder(teacher, student):
    """Whether two WhisperASRs encode alike (same window, same encoder weights)."""
    if teacher.window_seconds != student.window_seconds:
        return False
    theirs = dict(teacher.model.model.encoder.named_parameters())
    ours = dict(student.model.model.encoder.named_parameters())
    return theirs.keys() == ours.keys() and all(
        theirs[name].shape == ours[name].shape and torch.equal(theirs[name].cpu(), ours[name].cpu())
        for name in ours
    )


def from_hparams(hparams):
    """The run's ``Distiller`` (None without a ``teacher`` or at ``distill_weight: 0``, where
    the teacher is neither loaded nor run), after cutting the student's decoder when
    ``student_decoder_layers`` asks (a cut needs no teacher)."""
    student = hparams["whisper"]
    if hparams["student_decoder_layers"]:
        keep_decoder_layers(student.model, hparams["student_decoder_layers"])
    if hparams["teacher"] is None:
        return None
    if hparams["objective"] == "mwer":
        raise DistillationError("teacher: distillation trains with objective ce, not mwer")
    if not hparams["distill_weight"]:
        return None
    from whisper_finetuning.model.sources import load_frozen  # the teacher's own loader

    # a teacher model encodes as the student does, so that an equal encoder is shared
    teacher, _ = load_frozen(hparams["teacher"], hparams["whisper_cache"], student.window_seconds)
    weight, temperature = hparams["distill_weight"], hparams["distill_temperature"]
    return Distiller(teacher, weight, temperature, student)
