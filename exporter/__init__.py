"""gaudi-exporter: Prometheus exporter for Intel Gaudi nodes, with live training cost."""

__version__ = "0.1.0"
