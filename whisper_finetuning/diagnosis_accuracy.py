"""How often is the diagnosis right? Real tiny.en fine-tunes with planted causes, diagnosed.

Every run is ``train.py hparams/demo_tiny_en.yaml`` (the bundled tiny.en, cross-attention
only) on a subset of the espeak-ng accent corpus (``data.prepare.accent_corpus``: every sentence in
five voices, split by sentence), one subset per seed. Causes are planted as follows:

- ``noise_2``, ``noise_5``, ``noise_10``: that share of training rows get the transcript of a
  corpus sentence used in no split (real mislabelled training, real model);
- ``ordering``: ``--sorting=ascending`` (batches by length, the same order every epoch);
- ``lr_jump``: epoch 1 at the demo rate, then a new run starts from its checkpoint at a tenth
  of it (Noam with one warmup step, a new batch order) and its logs become epoch 2;
- ``memorization``: 6 sentences, 8 epochs, the whole decoder trained at the demo rate;
- ``running_mean``: the clean runs' real per-step losses re-logged by a running-mean logger
  (``logged_loss``: the cumulative mean reset every epoch, what such a logger writes) next to
  them; ``running_mean_only``: the mean alone, as a logger that writes nothing else; the
  training itself is the clean run's, so it costs no training;
- ``noise_5+ordering`` (trained) and ``noise_5+running_mean`` (re-logged): two causes at once.

Each run is diagnosed (``analysis.diagnosis.run``); the table gives, per claim, how often it is
made when planted (recall) and when not (false alarms, on clean runs and on all runs without
it), and the label-noise suspects' precision and recall at the reported cut. Finished runs are
kept in ``--work_folder`` and reused, so a second call only re-diagnoses.

Usage: python -m whisper_finetuning.diagnosis_accuracy \
    [--seeds 5] [--train_sentences 16] [--scenarios ...]
"""

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from whisper_finetuning.analysis.diagnosis.run import run as diagnose
from whisper_finetuning.analysis.diagnosis.stats import words_of
from whisper_finetuning.common.files import write_json
from whisper_finetuning.data.prepare import accent_corpus

TRAINED = {
    "clean": {},
    "noise_2": {"noise": 0.02},
    "noise_5": {"noise": 0.05},
    "noise_10": {"noise": 0.10},
    "ordering": {"overrides": ["--sorting=ascending"]},
    "lr_jump": {"lr_jump": 0.1},
    "memorization": {"memorize": True},
    "noise_5+ordering": {"noise": 0.05, "overrides": ["--sorting=ascending"]},
}
# Re-logged from a trained run: the running mean next to the per-step loss, or alone.
RELOGGED = {
    "running_mean": "clean",
    "running_mean_only": "clean",
    "noise_5+running_mean": "noise_5",
}
PLANTED = {
    "clean": set(),
    "noise_2": {"label_noise"},
    "noise_5": {"label_noise"},
    "noise_10": {"label_noise"},
    "ordering": {"ordering"},
    "lr_jump": {"schedule"},
    "memorization": {"memorization"},
    "noise_5+ordering": {"label_noise", "ordering"},
    "running_mean": {"running_mean_artifact"},
    "running_mean_only": {"running_mean_artifact"},
    "noise_5+running_mean": {"label_noise", "running_mean_artifact"},
}
CLAIMS = (
    "label_noise",
    "ordering",
    "schedule",
    "memorization",
    "running_mean_artifact",
    "distribution_shift",
    "leakage",
    "lagging_group",
    "overconfidence",
)
MEMORIZE_SENTENCES, MEMORIZE_EPOCHS = 6, 8
DEMO_LR = 1e-4  # hparams/demo_tiny_en.yaml's
MEMORIZE_OVERRIDES = ["--trainable_patterns=[decoder]", f"--lr={DEMO_LR}", "--warmup_steps=8"]
POOL_VALID_SENTENCES = 10
LOGS = ("epochs.jsonl", "log", "valid", "run.json")
CONTINUED = "continued"  # the lr_jump run's second leg
LEG_SEED_OFFSET = 1000


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_folder", default="results/diagnosis_accuracy")
    parser.add_argument("--data_folder", default="data/accent_corpus")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first_seed", type=int, default=1)
    parser.add_argument("--train_sentences", type=int, default=16, help="per run, x5 voices")
    parser.add_argument("--pool_sentences", type=int, default=90, help="sentences runs draw from")
    parser.add_argument("--valid_sentences", type=int, default=4, help="per run, x5 voices")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scenarios", nargs="+", default=[*TRAINED, *RELOGGED])
    parser.add_argument(
        "--no_training", action="store_true", help="diagnose the finished runs kept, train none"
    )
    return parser.parse_args(argv)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def sentence_of(row):
    return row["ID"].split("_")[-1]


def corpus(args):
    """The pool of train/valid sentences (all voices) and the sentences used in no split."""
    manifests = accent_corpus.prepare_accent_corpus(
        args.data_folder,
        Path(args.work_folder) / "corpus",
        n_valid_sentences=POOL_VALID_SENTENCES,
        n_test_sentences=1,
        n_train_sentences=args.pool_sentences,
    )
    used = {" ".join(words_of(r["wrd"])) for split in manifests.values() for r in read_rows(split)}
    unused = [s for s in accent_corpus.load_sentences() if " ".join(words_of(s)) not in used]
    return {split: read_rows(path) for split, path in manifests.items()}, manifests, unused


def plant(rows, spec, seed, unused, args):
    """The run's training rows with the spec's cause planted, and the mislabelled ids."""
    rng = random.Random(seed)
    sentences = sorted({sentence_of(r) for r in rows})
    count = MEMORIZE_SENTENCES if spec.get("memorize") else args.train_sentences
    chosen = set(rng.sample(sentences, count))
    rows = [dict(r) for r in rows if sentence_of(r) in chosen]
    noisy = set()
    if spec.get("noise"):
        noisy = set(rng.sample([r["ID"] for r in rows], round(spec["noise"] * len(rows))))
        labels = rng.sample(unused, len(noisy))
        for row in rows:
            if row["ID"] in noisy:
                row["wrd"] = labels.pop()
    return rows, sorted(noisy)


def run_settings(name, args):
    """What a trained run depends on: a kept run is reused only under the same settings."""
    keys = ("train_sentences", "pool_sentences", "valid_sentences", "batch_size", "epochs")
    return {"scenario": name, **{key: getattr(args, key) for key in keys}}


def train(folder, train_csv, valid_csv, manifests, spec, seed, args):
    """Run train.py (twice for the learning-rate jump); True when it finished."""
    work = Path(args.work_folder).resolve()
    epochs = MEMORIZE_EPOCHS if spec.get("memorize") else args.epochs
    command = [
        sys.executable,
        "train.py",
        "hparams/demo_tiny_en.yaml",
        f"--data_folder={Path(args.data_folder).resolve()}",
        "--skip_prep=True",
        f"--train_csv={train_csv}",
        f"--valid_csv={valid_csv}",
        f"--batch_size={args.batch_size}",
        f"--test_csv=[{Path(manifests['test']).resolve()}]",
        "--longform_test_csv=[]",
        f"--whisper_cache={work / 'models'}",
        f"--encoder_cache_folder={work / 'encoder_cache'}",
        "--zero_shot_eval=False",
        "--diagnose_after_training=False",
        "--data_checks=off",
        "--num_workers=0",
        "--ckpt_interval_minutes=0",
        "--decode_max_tokens=48",
        *spec.get("overrides", []),
    ]
    if spec.get("memorize"):
        command += MEMORIZE_OVERRIDES
    legs = [
        command + [f"--output_folder={folder}", f"--seed={seed}", f"--number_of_epochs={epochs}"]
    ]
    if spec.get("lr_jump"):
        # Epoch 1 at the demo rate; epoch 2 starts from its checkpoint at a tenth of it,
        # decaying from there (Noam with one warmup step), and its logs are appended.
        legs = [
            command + [f"--output_folder={folder}", f"--seed={seed}", "--number_of_epochs=1"],
            command
            + [
                f"--output_folder={folder / CONTINUED}",
                f"--init_from={folder}",
                f"--seed={seed + LEG_SEED_OFFSET}",  # a restart draws a new batch order
                "--number_of_epochs=1",
                f"--lr={DEMO_LR * spec['lr_jump']}",
                "--warmup_steps=1",
            ],
        ]
    for leg in legs:
        done = subprocess.run(leg, capture_output=True, text=True)
        if done.returncode != 0:
            (folder / "harness_error.txt").write_text(done.stderr[-5000:])
            return False
    if spec.get("lr_jump"):
        append_continued_epoch(folder)
    return True


def append_continued_epoch(folder):
    """Append the continued run's epoch 1 logs to ``folder``'s as its epoch 2."""
    continued = folder / CONTINUED
    steps_before = len((folder / "log" / "steps.jsonl").read_text().splitlines())
    renumbered = {
        "epochs.jsonl": lambda r: {
            **r,
            "epoch": r["epoch"] + 1,
            "optimizer_steps": r["optimizer_steps"] + steps_before,
        },
        "log/steps.jsonl": lambda r: {
            **r,
            "epoch": r["epoch"] + 1,
            "step": r["step"] + steps_before,
        },
        "log/train_utterances.jsonl": lambda r: {**r, "epoch": r["epoch"] + 1},
        "valid/utterances_epoch1.jsonl": lambda r: r,
    }
    for name, renumber in renumbered.items():
        rows = [json.loads(line) for line in (continued / name).read_text().splitlines() if line]
        target = folder / name.replace("epoch1", "epoch2")
        with open(target, "a") as f:
            f.writelines(json.dumps(renumber(row)) + "\n" for row in rows)


def relog_running_mean(source, folder, keep_step_loss):
    """A copy of ``source``'s logs whose steps carry a running-mean ``logged_loss``, next to
    the per-step ``loss`` or (a logger that writes only the mean) instead of it."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in LOGS:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, folder / name)
        elif path.exists():
            shutil.copy(path, folder / name)
    steps_path = folder / "log" / "steps.jsonl"
    steps = [json.loads(line) for line in steps_path.read_text().splitlines() if line.strip()]
    totals = {}
    for step in steps:
        if step.get("loss") is not None:
            total, count = totals.get(step["epoch"], (0.0, 0))
            totals[step["epoch"]] = (total + step["loss"], count + 1)
            step["logged_loss"] = totals[step["epoch"]][0] / totals[step["epoch"]][1]
            if not keep_step_loss:
                del step["loss"]
    steps_path.write_text("".join(json.dumps(s) + "\n" for s in steps))
    for name in ("mislabelled.json",):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)


def claims(result):
    """The claims a diagnosis makes, by name."""
    # Causes of a drop, and what the report states about the logger, order and schedule
    # without one (whisper_finetuning.analysis.diagnosis.report).
    boundary = result.get("epoch_boundary") or {}
    made = {t["cause"] for t in boundary.get("tests", []) if t["passed"]}
    if any(t["evidence"].get("order_not_random") for t in boundary.get("tests", [])):
        made.add("ordering")
    if (result.get("memorization") or {}).get("passed"):
        made.add("memorization")
    if result.get("label_noise_suspects"):
        made.add("label_noise")
    for name in ("distribution_shift", "leakage"):
        if (result.get(name) or {}).get("flagged"):
            made.add(name)
    if (result.get("lagging_groups") or {}).get("lagging"):
        made.add("lagging_group")
    if any(r["flagged"] for r in result.get("overconfidence") or []):
        made.add("overconfidence")
    return made


def run_all(args):
    """Train (or reuse) and diagnose every scenario x seed; the per-run outcomes."""
    splits, manifests, unused = corpus(args)
    work = Path(args.work_folder).resolve()
    outcomes = []
    valid_sentences = sorted({sentence_of(r) for r in splits["valid"]})[: args.valid_sentences]
    valid_rows = [r for r in splits["valid"] if sentence_of(r) in valid_sentences]
    trained = [
        s for s in TRAINED if s in args.scenarios or s in {RELOGGED.get(x) for x in args.scenarios}
    ]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in trained:
            folder = work / "runs" / f"{name}_seed{seed}"
            marker = folder / "harness_done.json"
            settings = run_settings(name, args)
            kept = marker.exists() and json.loads(marker.read_text()).get("settings") == settings
            if not kept and args.no_training:
                continue
            if not kept:
                start = time.monotonic()
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                rows, noisy = plant(splits["train"], TRAINED[name], seed, unused, args)
                write_rows(folder / "train.csv", rows)
                write_rows(folder / "valid.csv", valid_rows)
                write_json(folder / "mislabelled.json", noisy)
                spec = TRAINED[name]
                if not train(
                    folder, folder / "train.csv", folder / "valid.csv", manifests, spec, seed, args
                ):
                    print(f"{name} seed {seed}: train.py failed, see {folder}/harness_error.txt")
                    continue
                seconds = round(time.monotonic() - start, 1)
                write_json(marker, {"settings": settings, "seconds": seconds})
            print(f"{name} seed {seed}: trained in {json.loads(marker.read_text())['seconds']} s")
        for name, source in RELOGGED.items():
            if (
                name in args.scenarios
                and (work / "runs" / f"{source}_seed{seed}" / "harness_done.json").exists()
            ):
                relog_running_mean(
                    work / "runs" / f"{source}_seed{seed}",
                    work / "runs" / f"{name}_seed{seed}",
                    keep_step_loss=not name.endswith("_only"),
                )
        for name in args.scenarios:
            folder = work / "runs" / f"{name}_seed{seed}"
            trained_as = RELOGGED.get(name, name)
            marker = work / "runs" / f"{trained_as}_seed{seed}" / "harness_done.json"
            if not marker.exists() or json.loads(marker.read_text()).get(
                "settings"
            ) != run_settings(trained_as, args):
                continue
            result = diagnose(folder)
            noisy = set(json.loads((folder / "mislabelled.json").read_text()))
            named = {s["id"] for s in result.get("label_noise_suspects") or []}
            outcomes.append(
                {
                    "scenario": name,
                    "seed": seed,
                    "planted": sorted(PLANTED[name]),
                    "claims": sorted(claims(result)),
                    "mislabelled": len(noisy),
                    "suspects": len(named),
                    "true_suspects": len(named & noisy),
                }
            )
            print(f"{name} seed {seed}: claims {outcomes[-1]['claims']}")
    return outcomes


def rate(hits, total):
    return f"{hits}/{total} ({100 * hits / total:.0f}%)" if total else "-"


def table(outcomes):
    """Markdown tables: per claim recall and false alarms; label noise at the reported cut."""
    lines = [
        "| claim | recall (planted) | false alarms: clean runs | false alarms: runs without it |",
        "|---|---|---|---|",
    ]
    for claim in CLAIMS:
        planted = [o for o in outcomes if claim in o["planted"]]
        others = [o for o in outcomes if claim not in o["planted"]]
        clean = [o for o in outcomes if o["scenario"] == "clean"]
        lines.append(
            f"| {claim} | {rate(sum(claim in o['claims'] for o in planted), len(planted))} | "
            f"{rate(sum(claim in o['claims'] for o in clean), len(clean))} | "
            f"{rate(sum(claim in o['claims'] for o in others), len(others))} |"
        )
    lines += [
        "",
        "| scenario | runs | mislabelled rows | named | precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    for scenario in dict.fromkeys(o["scenario"] for o in outcomes):
        runs = [o for o in outcomes if o["scenario"] == scenario]
        noisy, named = sum(o["mislabelled"] for o in runs), sum(o["suspects"] for o in runs)
        true = sum(o["true_suspects"] for o in runs)
        lines.append(
            f"| {scenario} | {len(runs)} | {noisy} | {named} | "
            f"{rate(true, named)} | {rate(true, noisy)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    unknown = set(args.scenarios) - set(PLANTED)
    if unknown:
        sys.exit(f"error: unknown scenario(s) {sorted(unknown)}; known: {sorted(PLANTED)}")
    start = time.monotonic()
    outcomes = run_all(args)
    text = table(outcomes)
    print(text)
    settings = {k: v for k, v in vars(args).items()}
    write_json(
        Path(args.work_folder) / "accuracy.json",
        {"settings": settings, "outcomes": outcomes, "table": text},
    )
    print(
        f"{len(outcomes)} diagnosed runs in {time.monotonic() - start:.0f} s; settings {settings}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
