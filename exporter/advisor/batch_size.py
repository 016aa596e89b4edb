"""`gaudi-exporter advise batch-size`: the measured cost per sample of each batch size a job used."""

from __future__ import annotations

import sys

from exporter.advisor.compare import run


def main(argv: list[str]) -> int:
    return run(argv, label="batch_size", prog="gaudi-exporter advise batch-size")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
