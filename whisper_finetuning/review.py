"""Human review: choose between checkpoints by ear, on a local listening page.

    python -m whisper_finetuning.review EXPERIMENT_FOLDER [--port PORT] [--reviewer NAME]
                           [--candidates 1,3,5] [--n 40] [--data-folder DIR]
    python -m whisper_finetuning.review summarize EXPERIMENT_FOLDER

The first serves a page at http://127.0.0.1:PORT/ that plays validation utterances where the
candidate epochs (default: min-WER, min-loss, last) disagree most, with each candidate's
transcript shown blind; every mark is appended to EXPERIMENT_FOLDER/review/judgments.jsonl.
The second aggregates the judgments into review/summary.json, review/summary.md and
review/corrections.csv, and prints the verdict.
"""

import argparse
import json
import sys
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


def build_session(args):
    """Candidates, the sampled utterances with their audio, and the judgment log."""
    from whisper_finetuning.analysis.review import data
    from whisper_finetuning.analysis.review.server import ReviewSession, Utterance
    from whisper_finetuning.analysis.review.store import JudgmentLog, judgments_path
    from whisper_finetuning.data import audio_sources

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
                hyps={e: transcripts[e][record["id"]]["hyp"] for e in candidates},
                groups={c: str(record.get(c, "")) for c in columns},
                audio=audio,
            )
        )
    if missing:
        print(f"warning: {missing} utterance(s) have no audio file", file=sys.stderr)
    log = JudgmentLog(judgments_path(exp))
    return ReviewSession(utterances, candidates, log, Path(exp).resolve().name, args.reviewer)


def serve(argv):
    """Serve the listening page until interrupted."""
    from whisper_finetuning.analysis.review.server import make_server

    parser = argparse.ArgumentParser(description="Serve the listening page (127.0.0.1 only).")
    parser.add_argument("experiment_folder", type=Path, help="a train.py output folder")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="0: a free one")
    parser.add_argument("--reviewer", help="preset the reviewer's name (else the page asks)")
    parser.add_argument("--candidates", type=parse_epochs, help="epochs to compare, e.g. 1,3,5")
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N, help="utterances to review")
    parser.add_argument("--data-folder", type=Path, help="where $data_root points (overrides)")
    args = parser.parse_args(argv)
    try:
        session = build_session(args)
    except (ValueError, OSError, KeyError) as error:  # ReviewError, malformed JSON
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


def summarize(argv):
    """Aggregate the judgments into review/summary.json, summary.md, corrections.csv."""
    from whisper_finetuning.analysis.review import data, report
    from whisper_finetuning.analysis.review.stats import summarize as aggregate
    from whisper_finetuning.analysis.review.store import judgments_path, latest, read_judgment_log
    from whisper_finetuning.common.files import write_text

    parser = argparse.ArgumentParser(description="Aggregate the judgments of a review.")
    parser.add_argument("experiment_folder", type=Path, help="a train.py output folder")
    parser.add_argument("--data-folder", type=Path, help="where $data_root points (overrides)")
    args = parser.parse_args(argv)
    exp = args.experiment_folder
    try:
        epochs = data.read_epochs(exp)
    except (ValueError, OSError, KeyError) as error:  # ReviewError, malformed JSON
        sys.exit(f"error: {error}")
    log = judgments_path(exp)
    records, skipped = read_judgment_log(log)
    if skipped:
        print(
            f"warning: skipped {len(skipped)} line(s) of {log} that are not judgments "
            f"(e.g. line {skipped[0]})",
            file=sys.stderr,
        )
    kept = latest(records)
    if not kept:
        sys.exit(f"error: no judgments in {log}: review first")
    columns = list(dict.fromkeys(c for j in kept.values() for c in j["groups"]))
    metric = data.selection_metric(exp)
    summary = aggregate(kept, data.selected_epoch(epochs, metric), columns)
    roles = data.candidate_roles(epochs, metric)
    summary["candidates"] = {
        str(e): {"roles": roles.get(e, []), "WER": epochs[e]["WER"], "loss": epochs[e]["loss"]}
        for e in map(int, summary["preference"])
        if e in epochs
    }
    corrected, conflicting = report.corrections(kept)
    summary["corrections"] = {"n": len(corrected), "conflicting": conflicting, "file": None}
    out = exp / "review" / report.CORRECTIONS_FILE
    out.unlink(missing_ok=True)  # corrections since withdrawn leave no stale manifest
    if corrected:
        try:
            columns, rows = data.read_manifest(data.manifest_source(exp, args.data_folder))
            report.write_corrections(out, columns, rows, corrected)
            summary["corrections"]["file"] = f"review/{report.CORRECTIONS_FILE}"
        except (ValueError, OSError, KeyError) as error:
            print(f"warning: corrections not exported: {error}", file=sys.stderr)
    summary["verdict"]["export_command"] = report.export_command(
        exp, summary["verdict"]["preferred_epoch"]
    )
    write_text(exp / "review" / "summary.json", json.dumps(summary, indent=2) + "\n")
    md = exp / "review" / "summary.md"
    write_text(md, report.markdown(summary))
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "summarize":
        summarize(argv[1:])
    else:
        serve(argv)


if __name__ == "__main__":
    main()
