"""FAKE habana_frameworks.torch: the real one registers the HPU device with torch; this one does nothing."""
