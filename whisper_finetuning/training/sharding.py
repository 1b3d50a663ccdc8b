"""``sharding: fsdp``: full fine-tuning with parameters, gradients and optimizer states sharded
over the processes of a torchrun (PyTorch's FSDP2, ``fully_shard``).

``shard`` applies ``fully_shard`` to every encoder and decoder layer, then to the whole
``WhisperASR`` (the root: stem, embeddings, layer norms, the tied output projection). Under
``precision: bf16`` the gathered parameters and the gradients' compute are bf16, the
reduce-scatter of gradients fp32 (``MixedPrecisionPolicy``); the sharded parameters and AdamW's
states stay fp32.

``ShardingBrain`` goes before ``sb.Brain`` in a recipe's bases. SpeechBrain 1.1.2 wraps every
trainable module in ``DistributedDataParallel`` in ``Brain._wrap_distributed`` and has no run
option that switches this off; that method is the one place a Brain chooses its wrapper, so
under ``sharding: fsdp`` it is replaced by ``shard`` (under ``ddp`` SpeechBrain's own runs).
Evaluation (greedy and beam search call the decoder outside ``forward``) runs on the whole
model: each valid or test stage gathers every layer once and keeps it gathered to its end
(``set_reshard_after_forward(False)``, as PyTorch's documentation suggests for evaluation).

Checkpoints are consolidated: ``torch.distributed.checkpoint``'s state-dict helpers gather the
full tensors (to CPU, on the main process) and the files are those of an unsharded run:
``whisper.ckpt`` holds the trainable parameters by name, ``optimizer.ckpt`` AdamW's
``state_dict()`` with parameters numbered in the optimizer's order. So the export, ``load_best``,
averaging and a rerun under ``sharding: ddp`` (or another number of GPUs) read them unchanged.
Loading scatters the full tensors back into each process's shards.
"""

import contextlib
import logging

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from whisper_finetuning.training import distributed
from whisper_finetuning.training.checkpointing import DamagedCheckpointFile, atomic_torch_save

logger = logging.getLogger(__name__)

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def is_sharded(module):
    """True when ``module`` was sharded by ``shard``."""
    return isinstance(module, FSDPModule)


def shard(whisper, device, bf16):
    """``fully_shard`` each encoder and decoder layer of a ``WhisperASR``, then the whole.

    Returns the same module (its class now also an ``FSDPModule``)."""
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
    )
    model = whisper.model.model
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(whisper, mesh=mesh, mp_policy=policy)
    return whisper


def _sharded_modules(root):
    """The ``FSDPModule`` s under ``root`` (itself included)."""
    return [m for m in root.modules() if isinstance(m, FSDPModule)]


def gather_for_evaluation(root):
    """Gather every layer's parameters once and keep them gathered until ``shard_again``."""
    root.set_reshard_after_forward(False)
    for module in _sharded_modules(root):
        module.unshard()
    root.gathered_for_evaluation = True


def shard_again(root):
    """Free the gathered parameters; layers reshard after each forward again (the root does
    not: its parameters are used by the loss after ``forward``)."""
    for module in _sharded_modules(root):
        module.reshard()
    root.set_reshard_after_forward(True)
    root.set_reshard_after_forward(False, recurse=False)
    root.gathered_for_evaluation = False


@contextlib.contextmanager
def sharded(module):
    """Within: every sharded model under ``module`` holds its shards (the parameters the
    optimizer and the state-dict helpers know); gathered again after, if it was."""
    roots = [m for m in module.modules() if getattr(m, "gathered_for_evaluation", False)]
    for root in roots:
        shard_again(root)
    try:
        yield
    finally:
        for root in roots:
            gather_for_evaluation(root)


@register_checkpoint_hooks
class ShardedModelState:
    """The ``whisper`` recoverable of a sharded ``WhisperASR``: the same ``whisper.ckpt`` as
    ``WhisperASR``'s own saver writes (its trainable parameters by name, full tensors)."""

    def __init__(self, whisper):
        self.whisper = whisper
        self._gathered = None

    def full_trainable(self):
        """Every trainable parameter as a full CPU tensor (a collective: call on every process;
        the main process gets them, the others an empty dict)."""
        model = self.whisper.model
        with sharded(self.whisper):
            full = get_model_state_dict(model, options=GATHER)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        return {name: full[name] for name in trainable if name in full}

    def gather_before_save(self):
        """Collect the full tensors (``AtomicCheckpointer`` calls this on every process)."""
        self._gathered = self.full_trainable()

    @mark_as_saver
    def save(self, path):
        """Write the gathered parameters (main process)."""
        trained, self._gathered = self._gathered, None
        atomic_torch_save(trained, path)

    @mark_as_loader
    def load(self, path, end_of_epoch):
        """Check the file as ``WhisperASR`` does, then scatter it into this process's shards."""
        del end_of_epoch
        saved = self.whisper.read_checkpoint(path)
        self.whisper.check_trainable(saved, path)
        with sharded(self.whisper):
            set_model_state_dict(self.whisper.model, saved, options=SCATTER)


@register_checkpoint_hooks
class ShardedOptimizerState:
    """The ``optimizer`` recoverable under FSDP: ``optimizer.ckpt`` as an unsharded run's
    ``optimizer.state_dict()`` (parameters numbered in the optimizer's order, full tensors)."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self._gathered = None

    def _names(self):
        """The optimizer's parameters' names in ``self.model``, in the optimizer's order."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def full_state(self):
        """The consolidated state, numbered as ``optimizer.state_dict()`` numbers it (a
        collective; the main process gets it, the others an empty dict)."""
        with sharded(self.model):
            full = get_optimizer_state_dict(self.model, self.optimizer, options=GATHER)
            names = self._names()
        if not full:
            return {}
        numbers = {name: i for i, name in enumerate(names)}
        groups = [{**g, "params": [numbers[n] for n in g["params"]]} for g in full["param_groups"]]
        state = {numbers[name]: value for name, value in full["state"].items()}
        return {"state": state, "param_groups": groups}

    def gather_before_save(self):
        """Collect the full state (``AtomicCheckpointer`` calls this on every process)."""
        self._gathered = self.full_state()

    @mark_as_saver
    def save(self, path):
        """Write the gathered state (main process)."""
        state, self._gathered = self._gathered, None
        atomic_torch_save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch):
        """Read an unsharded-format state and scatter it into this process's shards."""
        del end_of_epoch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        with sharded(self.model):
            self._load(saved, path)

    def _load(self, saved, path):
        """``load``'s work, with the parameters registered as their shards."""
        names = self._names()
        if len(saved.get("param_groups", [])) != len(self.optimizer.param_groups) or any(
            i >= len(names) for g in saved["param_groups"] for i in g["params"]
        ):
            raise DamagedCheckpointFile(f"optimizer state {path} does not fit this model")
        named = {
            "state": {names[i]: value for i, value in saved["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]
            ],
        }
        set_optimizer_state_dict(self.model, self.optimizer, named, options=SCATTER)
        # set_optimizer_state_dict rebuilds the groups from flattened keys, which turns tuples
        # (AdamW's betas) into lists: the steps are the same, but the next optimizer.ckpt would
        # not be the bytes an uninterrupted run writes. The groups' settings as in the file, as
        # a plain optimizer's load_state_dict keeps them.
        for group, saved_group in zip(
            self.optimizer.param_groups, saved["param_groups"], strict=True
        ):
            group.update({k: v for k, v in saved_group.items() if k != "params"})


class ShardingBrain:
    """Mixin for ``sb.Brain``: ``sharding: fsdp`` instead of DistributedDataParallel (see the
    module docstring)."""

    def __init__(self, *args, sharding="ddp", **kwargs):
        """SpeechBrain's Brain; ``sharding`` (ddp or fsdp) chooses the wrapper under torchrun."""
        self.sharding = sharding
        super().__init__(*args, **kwargs)

    @property
    def fsdp(self):
        """True when this run shards the model (``sharding: fsdp`` under torchrun)."""
        return self.sharding == "fsdp" and distributed.is_distributed()

    def _wrap_distributed(self):
        """SpeechBrain's DDP wrapper, or under ``sharding: fsdp`` the sharded model."""
        if not self.fsdp:
            return super()._wrap_distributed()
        whisper = self.modules["whisper"]
        if not is_sharded(whisper):
            shard(whisper, self.device, bf16=self.precision == "bf16")
            logger.info(
                "FSDP: Whisper sharded over %d processes", torch.distributed.get_world_size()
            )
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("whisper", ShardedModelState(whisper))
        return None

    def init_optimizers(self):
        """SpeechBrain's optimizer; under FSDP its checkpoint is consolidated."""
        super().init_optimizers()
        if self.fsdp and self.checkpointer is not None and self.opt_class is not None:
            state = ShardedOptimizerState(self.modules, self.optimizer)
            self.checkpointer.add_recoverable("optimizer", state)

    def on_stage_start(self, stage, epoch=None):
        """Under FSDP: the whole model gathered for evaluation, sharded again for training."""
        whisper = self.modules["whisper"]
        if is_sharded(whisper):
            if stage == sb.Stage.TRAIN:
                shard_again(whisper)
            else:
                gather_for_evaluation(whisper)
        super().on_stage_start(stage, epoch)
