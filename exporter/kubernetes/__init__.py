"""Who uses each HPU: kubelet pod-resources attribution (Kubernetes) and job files (Slurm-style HPC).

Import the submodules directly; ``client`` needs grpcio and protobuf (the ``kubernetes`` extra),
the rest does not.
"""
