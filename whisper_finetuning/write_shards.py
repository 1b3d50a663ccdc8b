"""Write WebDataset-style tar shards from manifests (any source: files, datasets, shards).

    python -m whisper_finetuning.write_shards train.csv valid.csv test.csv \
        --data_folder DIR --output SHARDS \\
        [--shard_mb 256]

Each manifest ``NAME.csv`` becomes ``SHARDS/NAME-000000.tar``, ... holding per row ``ID.<ext>``
(the audio's own encoded bytes) and ``ID.json`` (``text``, ``speaker`` and the other columns).
Train on them with ``--dataset=shards --data_folder=SHARDS`` (``data.prepare.shards``).
"""

import argparse
import sys

from whisper_finetuning.data.prepare.shards import DEFAULT_SHARD_MB, write_shards


def main(argv=None):
    """Write the shards; one summary line per manifest, or one error line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", help="CSV manifests (ID, wav, wrd, ...)")
    parser.add_argument("--data_folder", default=".", help="replaces $data_root in wav")
    parser.add_argument("--output", required=True, help="folder for the shards")
    parser.add_argument("--shard_mb", type=int, default=DEFAULT_SHARD_MB, help="audio per shard")
    args = parser.parse_args(argv)
    try:
        summary = write_shards(args.manifests, args.data_folder, args.output, args.shard_mb)
    except ValueError as error:
        sys.exit(f"error: {error}")
    for stem, counts in summary.items():
        skipped = ", ".join(f"{n} {why}" for why, n in counts["skipped"].items())
        print(
            f"{stem}: {counts['utterances']} utterances in {counts['shards']} shards"
            + (f" (skipped {skipped})" if skipped else "")
        )


if __name__ == "__main__":
    main()
