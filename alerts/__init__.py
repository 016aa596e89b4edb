"""Prometheus recording rules, alerts and Alertmanager routing for gaudi-exporter, generated from thresholds.yaml.

Entry points: ``alerts.build.main(argv)`` (``gaudi-exporter rules build``) and ``alerts.thresholds.load(path)``.
"""
