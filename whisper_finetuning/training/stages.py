"""The stages of a recipe run around ``fit``: the experiment folder it holds, what happens
before training (``init_from``, ``run.json``, zero-shot decoding) and after it (averaging,
the kept checkpoints, test and long-form decoding, comparisons, the diagnosis)."""

import contextlib
import os

from speechbrain.utils.distributed import if_main_process, run_on_main

from whisper_finetuning.analysis.diagnosis.run import run_after_training as diagnose_run
from whisper_finetuning.data.manifests import keep_test_name
from whisper_finetuning.decoding import longform
from whisper_finetuning.evaluation import scoring
from whisper_finetuning.training import (
    averaging,
    distributed,
    forgetting,
    provenance,
    run_lock,
    runs,
    stopping,
)
from whisper_finetuning.training import log as training_log


@contextlib.contextmanager
def experiment(hparams, run_opts):
    """Hold the output folder for one run: its lock, stop requests, the process group and the
    rerun check (a checkpoint's data and settings stay its own); yields whether this run
    trains. SpeechBrain's experiment folder is the script's to create (it copies its caller)."""
    with run_lock.holding(hparams["output_folder"]):  # before anything is written there
        stopping.install()
        distributed.init_group(run_opts)
        try:
            yield provenance.check_rerun(hparams)
        finally:
            distributed.leave_group()


def start(brain, hparams, trains, test_sets, test_loader_kwargs, zero_shot):
    """Before ``fit``: ``init_from``'s weights, ``run.json``, and with ``zero_shot`` the test
    sets decoded by the model as it came (``zero_shot/``); the keep test set always is."""
    provenance.start_from(hparams)  # init_from: an earlier run's checkpoint, in a new folder
    if trains and if_main_process():
        training_log.write_run_info(hparams, brain.grad_accumulation_factor)
    keep = keep_test_name(hparams["keep_test_csv"])
    decoded = test_sets if zero_shot else {n: d for n, d in test_sets.items() if n == keep}
    if decoded and hparams["decode_test_sets"]:
        folder = os.path.join(hparams["output_folder"], "zero_shot")
        runs.decode_test_sets(brain, decoded, hparams, folder, test_loader_kwargs)
        if zero_shot:
            run_on_main(runs.decode_longform_sets, args=[brain, hparams, folder, True])


def finish(
    brain,
    valid_set,
    test_sets,
    hparams,
    test_loader_kwargs,
    *,
    selection_metric,
    zero_shot,
    longform_test_csv,
    comparison_group,
):
    """After ``fit``: averaging, the fit marker, only the kept checkpoints left, the test and
    long-form sets decoded by the checkpoint best by ``selection_metric``, the comparisons with
    zero-shot (per ``comparison_group``; on the keep test set, the forgetting), the
    diagnosis."""
    if hparams["average_checkpoints"] > 1:
        averaging.average_best_epochs(brain, valid_set, hparams["valid_loader_kwargs"])
    # Training is over: mark it so, then keep only the selected end-of-epoch checkpoint
    # (with review_checkpoints, the min-loss and last ones too).
    if if_main_process():
        runs.mark_fit_done(hparams["save_folder"], hparams["number_of_epochs"])
    brain.checkpointer.delete_checkpoints(num_to_keep=1, importance_keys=brain.kept_checkpoints)
    output = hparams["output_folder"]
    if hparams["decode_test_sets"]:  # a sweep's trials choose by valid only
        runs.decode_test_sets(
            brain, test_sets, hparams, output, test_loader_kwargs, min_key=selection_metric
        )
        brain.on_evaluate_start(min_key=selection_metric)  # long-form too: the kept checkpoint
        run_on_main(runs.decode_longform_sets, args=[brain, hparams, output])
        if zero_shot:
            args = [output, next(iter(test_sets)), comparison_group]
            run_on_main(scoring.write_comparison, args=args)
            if longform_test_csv:
                run_on_main(longform.write_comparison, args=[output, runs.longform_names(hparams)])
        if hparams["keep_test_csv"]:
            keep = keep_test_name(hparams["keep_test_csv"])
            args = [output, keep, hparams["keep_test_csv"]]
            run_on_main(forgetting.write_forgetting, args=args)
    if hparams["diagnose_after_training"]:
        run_on_main(diagnose_run, args=[output])
