"""The advisor's phase split, cost join and command-line errors, on series shaped like Prometheus returns."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.advisor import batch_size, report
from exporter.advisor.prom import Series, parse_duration, parse_time
from exporter.advisor.runs import AdvisorError, increase, join_cost, price_phases, split_phases

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"job": "training", "instance": "10.0.0.7:9655", "exported_job": "j"}
NODE = {"job": "gaudi", "instance": "10.0.0.7:9654"}


def info(bs_by_time: dict[float, str], labels=TRAIN) -> list[Series]:
    out: dict[str, list] = {}
    for t, bs in bs_by_time.items():
        out.setdefault(bs, []).append((t, 1.0))
    return [Series({**labels, "__name__": "gaudi_training_info", "batch_size": bs, "precision": "bf16",
                    "model": ""}, pts) for bs, pts in out.items()]


def test_phases_split_at_the_info_change_and_survive_a_restart():
    # t 0..4 batch 8 at 10 samples/s; t 5..9 batch 32 at 40 samples/s; a restart (reset) at t=7
    times = list(range(10))
    values = [0, 10, 20, 30, 40, 80, 120, 40, 80, 120]
    samples = [Series({**TRAIN, "__name__": "gaudi_training_samples_total"},
                      [(float(t), float(v)) for t, v in zip(times, values, strict=True)])]
    phases = split_phases(samples, info({float(t): ("8" if t < 5 else "32") for t in times}), "batch_size")
    assert phases["8"].points == 4 and phases["8"].samples_per_second == pytest.approx(10)
    # the pair 4->5 spans the change and is dropped; 6->7 is a reset: 40 samples counted since restart
    assert phases["32"].points == 4 and phases["32"].samples == 40 + 40 + 40 + 40
    cost = [Series({**NODE, "__name__": "gaudi_node_cost_usd_total"}, [(float(t), 2.0 * t) for t in times])]
    price_phases(phases, join_cost(sorted({t for p in phases.values() for t in p.targets}), cost))
    assert phases["8"].usd_per_second == pytest.approx(2.0)
    assert phases["8"].usd_per_sample == pytest.approx(0.2)
    assert phases["32"].usd_per_sample == pytest.approx(0.05)


def test_join_prefers_the_node_label_and_names_what_it_cannot_match():
    t = (("instance", "10.1.2.3:9655"), ("job", "training"), ("node", "gaudi-7"))
    pts = [(0.0, 0.0), (1.0, 1.0)]
    cost = [Series({"job": "gaudi", "instance": "10.9.9.9:9654", "node": "gaudi-7"}, pts),
            Series({"job": "gaudi", "instance": "10.9.9.8:9654", "node": "gaudi-8"}, pts)]
    j = join_cost([t], cost)
    assert j.method == "node" and [dict(n)["node"] for n in j.nodes[t]] == ["gaudi-7"]
    with pytest.raises(AdvisorError, match="10.1.2.3"):
        join_cost([t], cost, "instance-host")


def test_counter_increase_handles_resets():
    assert increase([(0, 5.0), (1, 7.0), (2, 1.0), (3, 4.0)]) == 2 + 1 + 3


def test_time_and_duration_parsing_name_the_bad_value():
    assert parse_duration("90s") == 90 and parse_duration("1h") == 3600
    assert parse_time("now-1h", now=10_000) == 6_400
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600
    with pytest.raises(ValueError, match="1 hour"):
        parse_duration("1 hour")


def dead_url() -> tuple[socket.socket, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


def test_cli_errors_are_clear(capsys, tmp_path):
    sock, url = dead_url()
    with sock:
        assert batch_size.main(["--prometheus", url, "--job", "j"]) == 1
        assert "unreachable" in capsys.readouterr().err
        assert report.main(["--prometheus", url, "--job", "j", "--out", str(tmp_path)]) == 1
        assert "unreachable" in capsys.readouterr().err
    assert batch_size.main(["--prometheus", url, "--job", "j", "--epochs", "3"]) == 2
    assert "--dataset-size" in capsys.readouterr().err
    assert batch_size.main(["--prometheus", url, "--job", "j", "--range", "forever"]) == 2
    assert "forever" in capsys.readouterr().err
    assert batch_size.main(["--prometheus", "prometheus:9090", "--job", "j"]) == 2
    assert "--prometheus" in capsys.readouterr().err


def test_training_and_advisor_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError
            "import exporter.training, exporter.training.callbacks, exporter.advisor.report\n"
            "import exporter.advisor.batch_size, exporter.advisor.precision\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_nothing_outside_training_imports_torch():
    offenders = []
    for path in (REPO / "exporter").rglob("*.py"):
        if "training" in path.relative_to(REPO / "exporter").parts:
            continue
        text = path.read_text()
        if "import torch" in text or "from torch" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_a_pod_restarted_on_another_node_mid_phase_is_not_counted_twice():
    """One phase (batch 32) at 10 samples/s: pod A on node n1 for t 0..5, then it restarts as pod B on node n2
    for t 6..11. Both nodes cost 2 USD/s. Concurrent sums would report 20 samples/s and 4 USD/s."""
    pod_a = {"job": "j", "instance": "10.0.0.1:9655", "node": "n1", "pod": "train-a"}
    pod_b = {"job": "j", "instance": "10.0.0.2:9655", "node": "n2", "pod": "train-b"}
    a_times, b_times = range(0, 6), range(6, 12)
    samples = [Series({**pod_a, "__name__": "gaudi_training_samples_total"},
                      [(float(t), 10.0 * t) for t in a_times]),
               Series({**pod_b, "__name__": "gaudi_training_samples_total"},
                      [(float(t), 10.0 * (t - 6)) for t in b_times])]
    infos = info({float(t): "32" for t in a_times}, pod_a) + info({float(t): "32" for t in b_times}, pod_b)
    phases = split_phases(samples, infos, "batch_size")
    ph = phases["32"]
    assert len(ph.targets) == 2 and ph.samples == 100 and ph.seconds == 10
    assert ph.samples_per_second == pytest.approx(10)
    assert ph.points == 10  # both pods' intervals: a restart does not halve the evidence
    all_times = [float(t) for t in range(12)]
    cost = [Series({"job": "gaudi", "instance": "10.0.0.1:9654", "node": "n1"}, [(t, 2.0 * t) for t in all_times]),
            Series({"job": "gaudi", "instance": "10.0.0.2:9654", "node": "n2"}, [(t, 2.0 * t) for t in all_times])]
    price_phases(phases, join_cost(sorted(ph.targets), cost))
    assert ph.usd_per_second == pytest.approx(2.0)  # one node at a time
    assert ph.cost_usd == pytest.approx(2.0 * 10)
    assert ph.usd_per_sample == pytest.approx(0.2)


def test_two_pods_at_once_add_their_throughput_and_their_nodes_cost():
    """A two-node job: both pods run t 0..10, each reporting its own node's samples; cost is both nodes."""
    pods = [{"job": "j", "instance": f"10.0.0.{i}:9655", "node": f"n{i}"} for i in (1, 2)]
    times = [float(t) for t in range(11)]
    samples = [Series({**p, "__name__": "gaudi_training_samples_total"}, [(t, 10.0 * t) for t in times])
               for p in pods]
    infos = [s for p in pods for s in info({t: "32" for t in times}, p)]
    phases = split_phases(samples, infos, "batch_size")
    ph = phases["32"]
    assert ph.samples_per_second == pytest.approx(20) and ph.points == 10
    cost = [Series({"job": "gaudi", "instance": f"10.0.0.{i}:9654", "node": f"n{i}"}, [(t, 2.0 * t) for t in times])
            for i in (1, 2)]
    price_phases(phases, join_cost(sorted(ph.targets), cost))
    assert ph.usd_per_second == pytest.approx(4.0)
    assert ph.usd_per_sample == pytest.approx(0.2)
