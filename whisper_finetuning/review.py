"""Human review: choose between checkpoints by ear, on a local listening page.

    python -m whisper_finetuning.review EXPERIMENT_FOLDER [--port PORT] [--reviewer NAME]
                           [--candidates 1,3,5] [--n 40] [--data-folder DIR]
    python -m whisper_finetuning.review summarize EXPERIMENT_FOLDER
    python -m whisper_finetuning.review --runs EXP1 EXP2 [...] [--output-folder DIR] [...]
    python -m whisper_finetuning.review summarize --runs EXP1 EXP2 [...] [--output-folder DIR]

The first serves a page at http://127.0.0.1:PORT/ that plays validation utterances where the
candidate epochs (default: min-WER, min-loss, last) disagree most, with each candidate's
transcript shown blind; every mark is appended to EXPERIMENT_FOLDER/review/judgments.jsonl.
The second aggregates the judgments into review/summary.json, review/summary.md and
review/corrections.csv, and prints the verdict. With ``--runs``, the candidates are instead
each finished run's selected checkpoint on the runs' test set (``EXP/utterances_NAME.jsonl``),
the judgments and summary are kept in ``DIR/review/`` (default: the current folder), and the
summary ranks the runs by the listeners' preference.
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

DEFAULT_N = 40
DEFAULT_PORT = 8765
MAX_PORT = 65535


def parse_epochs(text):
    """'1,3,5' -> [1, 3, 5]."""
    try:
        epochs = sorted({int(e) for e in text.split(",") if e.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epochs like 1,3,5, not '{text}'") from None
    if len(epochs) < 2:
        raise argparse.ArgumentTypeError("give at least two epochs to compare")
    return epochs


def positive_int(text):
    """An integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not '{text}'")
    return int(text)


def port_number(text):
    """A TCP port, 0 meaning any free one."""
    if not text.isdigit() or int(text) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port 0-{MAX_PORT}, not '{text}'")
    return int(text)


def check_mode(args):
    """One experiment folder (its epochs) or ``--runs`` (their selected checkpoints), not both."""
    from whisper_finetuning.analysis.review.data import ReviewError

    if args.runs is None:
        if args.experiment_folder is None:
            raise ReviewError("give an experiment folder, or --runs EXP1 EXP2 to compare runs")
        if args.output_folder is not None:
            raise ReviewError("--output-folder is for --runs: a run's review is in EXP/review")
        return
    if args.experiment_folder is not None:
        raise ReviewError(
            f"give an experiment folder or --runs, not both ({args.experiment_folder} and --runs)"
        )
    if getattr(args, "candidates", None):
        raise ReviewError(
            "--candidates picks epochs of one run; --runs compares each run's selected checkpoint"
        )
    args.output_folder = args.output_folder or Path(".")


def review_runs(args):
    """The runs of ``--runs`` (``data.run_transcripts``) and where their review is kept; refuses
    to keep it in one of the runs' folders, whose own review it would mix with."""
    from whisper_finetuning.analysis.review import data

    runs, test_set, transcripts = data.run_transcripts(args.runs)
    for run in runs:
        if args.output_folder.resolve() == run.folder:
            raise data.ReviewError(
                f"--output-folder {args.output_folder} is run {run.label}'s folder: keep a review "
                "across runs elsewhere (its own review is in EXP/review)"
            )
    return runs, test_set, transcripts


def epoch_candidates(args):
    """(candidates, transcripts, manifest source, review folder, title) of one run's epochs."""
    from whisper_finetuning.analysis.review import data

    exp = args.experiment_folder
    if args.candidates:
        candidates = args.candidates
    else:
        metric = data.selection_metric(exp)
        candidates = list(data.candidate_roles(data.read_epochs(exp), metric))
        if len(candidates) < 2:
            raise data.ReviewError(
                f"{data.role_name('selected', metric)}, min-loss and last are all epoch "
                f"{candidates[0]}: nothing to compare; "
                f"pick epochs with --candidates (validated: {data.valid_epochs(exp)})"
            )
    transcripts = data.load_transcripts(exp, candidates)
    source = data.manifest_source(exp, args.data_folder)
    return candidates, transcripts, source, exp, Path(exp).resolve().name


def run_candidates(args):
    """The same for ``--runs``: the candidates are the runs' labels, their selected checkpoints'
    transcripts of the first common test set, with that test manifest's audio."""
    from whisper_finetuning.analysis.review import data

    runs, test_set, transcripts = review_runs(args)
    source = data.manifest_source(runs[0].folder, args.data_folder, test_set=test_set)
    return [r.label for r in runs], transcripts, source, args.output_folder, f"{len(runs)} runs"


def build_session(args):
    """Candidates, the sampled utterances with their audio, and the judgment log."""
    from whisper_finetuning.analysis.review import data
    from whisper_finetuning.analysis.review.server import ReviewSession, Utterance
    from whisper_finetuning.analysis.review.store import JudgmentLog, judgments_path
    from whisper_finetuning.data import audio_sources

    check_mode(args)
    candidates, transcripts, source, folder, title = (
        run_candidates(args) if args.runs else epoch_candidates(args)
    )
    _, rows = data.read_manifest(source)
    first = next(iter(transcripts[candidates[0]].values()), {})
    columns = data.group_order(source.group_columns, first)
    sampled = data.sample_utterances(transcripts, columns, args.n)
    utterances, missing = [], 0
    for record, _ in sampled:
        row = rows.get(record["id"])
        audio = data.audio_reference(row, source.data_folder) if row else None
        missing += audio is None or not audio_sources.exists(audio)
        utterances.append(
            Utterance(
                id=record["id"],
                ref=record["ref"],
                hyps={c: transcripts[c][record["id"]]["hyp"] for c in candidates},
                groups={c: str(record.get(c, "")) for c in columns},
                audio=audio,
            )
        )
    if missing:
        print(f"warning: {missing} utterance(s) have no audio file", file=sys.stderr)
    log = JudgmentLog(judgments_path(folder))
    return ReviewSession(utterances, candidates, log, title, args.reviewer)


def add_mode_arguments(parser):
    """The experiment folder, or ``--runs`` and where their review is kept."""
    parser.add_argument("experiment_folder", type=Path, nargs="?", help="a train.py output folder")
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="EXP",
        help="two or more finished train.py output folders: compare their selected checkpoints",
    )
    parser.add_argument(
        "--output-folder",
        type=Path,
        help="with --runs: where review/ (judgments, summary) is kept (default: here)",
    )
    parser.add_argument("--data-folder", type=Path, help="where $data_root points (overrides)")


def serve(argv):
    """Serve the listening page until interrupted."""
    from whisper_finetuning.analysis.review.server import make_server
    from whisper_finetuning.common.errors import RecipeError

    parser = argparse.ArgumentParser(description="Serve the listening page (127.0.0.1 only).")
    add_mode_arguments(parser)
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="0: a free one")
    parser.add_argument("--reviewer", help="preset the reviewer's name (else the page asks)")
    parser.add_argument("--candidates", type=parse_epochs, help="epochs to compare, e.g. 1,3,5")
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N, help="utterances to review")
    args = parser.parse_args(argv)
    try:
        session = build_session(args)
    except (ValueError, OSError, KeyError, RecipeError) as error:  # ReviewError, bad JSON
        sys.exit(f"error: {error}")
    if not session.order:
        sys.exit(f"error: the candidates {session.candidates} agree on every utterance")
    try:
        server = make_server(session, args.port)
    except OSError as error:
        sys.exit(f"error: cannot listen on port {args.port}: {error.strerror}")
    host, port = server.server_address[:2]
    print(f"reviewing {len(session.order)} utterances, {len(session.candidates)} candidates")
    print(f"open http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def read_kept(folder):
    """The last judgment per reviewer and utterance in ``folder``'s log (foreign lines warned
    about and skipped), and the log's path."""
    from whisper_finetuning.analysis.review.store import judgments_path, latest, read_judgment_log

    log = judgments_path(folder)
    records, skipped = read_judgment_log(log)
    if skipped:
        print(
            f"warning: skipped {len(skipped)} line(s) of {log} that are not judgments "
            f"(e.g. line {skipped[0]})",
            file=sys.stderr,
        )
    return latest(records), log


def judged_columns(kept):
    """The group columns the judgments carry, in order of appearance."""
    return list(dict.fromkeys(c for j in kept.values() for c in j["groups"]))


def add_corrections(summary, kept, folder, source):
    """Write ``folder/review/corrections.csv`` from ``source``'s manifest (or remove a stale
    one) and note it in ``summary``."""
    from whisper_finetuning.analysis.review import data, report

    corrected, conflicting = report.corrections(kept)
    summary["corrections"] = {"n": len(corrected), "conflicting": conflicting, "file": None}
    out = folder / "review" / report.CORRECTIONS_FILE
    out.unlink(missing_ok=True)  # corrections since withdrawn leave no stale manifest
    if corrected:
        try:
            columns, rows = data.read_manifest(source())
            report.write_corrections(out, columns, rows, corrected)
            summary["corrections"]["file"] = f"review/{report.CORRECTIONS_FILE}"
        except (ValueError, OSError, KeyError) as error:
            print(f"warning: corrections not exported: {error}", file=sys.stderr)


def write_summary(summary, folder, markdown):
    """``folder/review/summary.json`` and ``summary.md`` (``markdown(summary)``); returns the
    markdown's path."""
    from whisper_finetuning.common.files import write_text

    write_text(folder / "review" / "summary.json", json.dumps(summary, indent=2) + "\n")
    md = folder / "review" / "summary.md"
    write_text(md, markdown(summary))
    return md


def summarize(argv):
    """Aggregate the judgments into review/summary.json, summary.md, corrections.csv."""
    from whisper_finetuning.common.errors import RecipeError

    parser = argparse.ArgumentParser(description="Aggregate the judgments of a review.")
    add_mode_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_mode(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if args.runs:
        try:
            runs, test_set, _ = review_runs(args)
        except (ValueError, OSError, KeyError, RecipeError) as error:
            sys.exit(f"error: {error}")
        summarize_runs(args, runs, test_set)
    else:
        summarize_epochs(args)


def summarize_epochs(args):
    """One run's review: the epochs ranked, and the verdict against the selected epoch."""
    from whisper_finetuning.analysis.review import data, report
    from whisper_finetuning.analysis.review.stats import summarize as aggregate

    exp = args.experiment_folder
    try:
        epochs = data.read_epochs(exp)
    except (ValueError, OSError, KeyError) as error:  # ReviewError, malformed JSON
        sys.exit(f"error: {error}")
    kept, log = read_kept(exp)
    if not kept:
        sys.exit(f"error: no judgments in {log}: review first")
    metric = data.selection_metric(exp)
    summary = aggregate(kept, data.selected_epoch(epochs, metric), judged_columns(kept))
    roles = data.candidate_roles(epochs, metric)
    summary["candidates"] = {
        str(e): {"roles": roles.get(e, []), "WER": epochs[e]["WER"], "loss": epochs[e]["loss"]}
        for e in map(int, summary["preference"])
        if e in epochs
    }
    add_corrections(summary, kept, exp, partial(data.manifest_source, exp, args.data_folder))
    summary["verdict"]["export_command"] = report.export_command(
        exp, summary["verdict"]["preferred_epoch"]
    )
    md = write_summary(summary, exp, report.markdown)
    print(report.headline(summary))
    command = summary["verdict"]["export_command"]
    preferred = summary["verdict"]["preferred_epoch"]
    if command:
        print(f"export it: {command}")
    elif preferred is not None:
        print(
            f"no checkpoint of epoch {preferred} in {exp / 'save'}: train with "
            "review_checkpoints: True to keep the candidates' checkpoints for export"
        )
    print(f"wrote {exp / 'review' / 'summary.json'} and {md}")


def summarize_runs(args, runs, test_set):
    """A review across runs: the runs ranked by preference, and the preferred run's export."""
    from whisper_finetuning.analysis.review import data, report
    from whisper_finetuning.analysis.review.stats import summarize_runs as aggregate

    folder = args.output_folder
    labels = [r.label for r in runs]
    kept, log = read_kept(folder)
    others = {k: j for k, j in kept.items() if sorted(map(str, j["candidates"])) != sorted(labels)}
    if others:
        print(
            f"warning: left out {len(others)} judgment(s) of {log} that compare other "
            f"candidates than the runs {', '.join(labels)}",
            file=sys.stderr,
        )
    kept = {k: j for k, j in kept.items() if k not in others}
    if not kept:
        sys.exit(f"error: no judgments of these runs in {log}: review first")
    summary = aggregate(kept, labels, judged_columns(kept))
    summary["test_set"] = test_set
    summary["candidates"] = {}
    for run in runs:
        scores = run.summary(test_set)
        summary["candidates"][run.label] = {
            "folder": str(run.folder),
            "selection_metric": run.selection_metric,
            "selected_epoch": scores.get("epoch"),
            "WER": scores.get("wer"),
        }
    source = partial(data.manifest_source, runs[0].folder, args.data_folder, test_set=test_set)
    add_corrections(summary, kept, folder, source)
    preferred = summary["verdict"]["preferred_run"]
    chosen = summary["candidates"].get(preferred, {})
    summary["verdict"]["export_command"] = (
        report.export_command(chosen["folder"], chosen["selected_epoch"]) if chosen else None
    )
    md = write_summary(summary, folder, report.runs_markdown)
    print(report.runs_headline(summary))
    if summary["verdict"]["export_command"]:
        print(f"export it: {summary['verdict']['export_command']}")
    print(f"wrote {folder / 'review' / 'summary.json'} and {md}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "summarize":
        summarize(argv[1:])
    else:
        serve(argv)


if __name__ == "__main__":
    main()
