"""The cost advisor: reads training and cost metrics back from Prometheus and compares measured settings.

Every figure it prints is computed from series Prometheus scraped (throughput from the training process,
cost from the node exporter's counters); nothing is taken from a built-in table of speed-ups.
"""
