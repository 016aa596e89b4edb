"""FAKE habana_frameworks for tests: only the HPU memory API the training metrics read. Not Intel's code."""

IS_FAKE = True
