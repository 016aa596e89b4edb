"""`gaudi-exporter advise precision`: the measured cost per sample of each precision (bf16, fp32, ...) a job used."""

from __future__ import annotations

import sys

from exporter.advisor.compare import run


def main(argv: list[str]) -> int:
    return run(argv, label="precision", prog="gaudi-exporter advise precision")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
