"""``trainer.distribution``: TF_CONFIG validation, chief-only output, and two real workers on localhost.

The slow test starts two ``recflow train`` processes, each with its own ``TF_CONFIG`` naming both (free ports on
127.0.0.1), trains with MultiWorkerMirroredStrategy on a small simulated shop and checks what one run must
show: both finish, the chief alone writes one complete bundle (the other worker's temporary copy is gone),
every epoch of every trained model saw each training example exactly once across the two workers, the two
workers end with the same metrics (they trained one model in step), and the bundle loads and recommends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_examplegen import write_world

from recflow.cli import main
from recflow.config import ValidationConfig, load_config
from recflow.errors import ConfigError
from recflow.examplegen import ExampleGenConfig, run_example_gen
from recflow.training.distribution import ClusterTask, output_dir, parse_tf_config

ROOT = Path(__file__).resolve().parents[1]
TWO = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'


@pytest.mark.parametrize("value, expected", [
    (None, "the environment variable is not set"),
    ("  ", "the environment variable is not set"),
    ("{'cluster': 1}", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, not list"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "\"host:port\" strings"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "an address twice"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "['ps'] are not supported"),
    ('{"cluster": {"chief": ["a:1", "c:3"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}',
     "at most one chief"),
    ('{"cluster": {"worker": ["a:1"]}}', 'no "task" object'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "'evaluator' cannot train"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "'chief' is not in the cluster"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task index 2"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "1"}}', "task index '1'"),
])
def test_a_bad_tf_config_is_a_config_error_naming_the_variable(value: str | None, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tf_config(value)
    assert str(info.value).startswith("TF_CONFIG: ") and expected in str(info.value)
    assert "hint: trainer.distribution.strategy=multi_worker_mirrored reads the cluster" in str(info.value)


def test_the_chief_is_the_chief_task_else_worker_0() -> None:
    assert parse_tf_config(TWO) == ClusterTask("worker", 1, 2, {"worker": ["a:1", "b:2"]})
    assert not parse_tf_config(TWO).is_chief
    assert parse_tf_config(TWO.replace('"index": 1', '"index": 0')).is_chief
    with_chief = '{"cluster": {"chief": ["c:0"], "worker": ["a:1", "b:2"]}, "task": {"type": "%s", "index": 0}}'
    assert parse_tf_config(with_chief % "chief").is_chief and parse_tf_config(with_chief % "chief").workers == 3
    assert not parse_tf_config(with_chief % "worker").is_chief  # worker 0 is not the chief when there is one


def test_only_the_chief_writes_the_real_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "model"
    with output_dir(out, parse_tf_config(TWO.replace('"index": 1', '"index": 0'))) as where:
        assert where == out
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with output_dir(out, parse_tf_config(TWO)) as where:
        assert where.name == "model" and scratch in where.parents and out not in (where, *where.parents)
        where.mkdir()
        (where / "training.json").write_text("{}")
    assert list(scratch.iterdir()) == [] and not out.exists()  # the worker's copy is gone, nothing was written


def test_the_distribution_settings_are_validated() -> None:
    cfg = load_config(None, ["trainer.distribution.strategy=multi_worker_mirrored",
                             "trainer.distribution.communication=ring"])
    assert (cfg.trainer.distribution.strategy, cfg.trainer.distribution.communication) == (
        "multi_worker_mirrored", "ring")
    assert load_config(None).trainer.distribution.strategy == "auto"
    with pytest.raises(ConfigError, match="trainer.distribution.strategy"):
        load_config(None, ["trainer.distribution.strategy=parameter_server"])


def test_recflow_train_without_tf_config_fails_clearly_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = main(["--set", "trainer.distribution.strategy=multi_worker_mirrored", "train", "--examples",
                 str(tmp_path / "ex"), "--transform", str(tmp_path / "tf"), "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 2 and "error: TF_CONFIG: the environment variable is not set" in err
    assert "Traceback" not in err and not (tmp_path / "model").exists()


def _free_ports(n: int) -> list[int]:
    """``n`` ports free on 127.0.0.1 now (bound together, so distinct, then released for the workers)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: Small but complete: the sequence model, the DCN ranker and the history ranker (two L2 candidates) all train.
SEQUENCE = ["trainer.sequence={epochs: 2}", "trainer.ranking_epochs=1", "trainer.history_ranking_epochs=1",
            "trainer.history_ranking_l2=[0.01]"]
TWO_TOWER = ["trainer.retrieval_model=two_tower", "trainer.epochs=2", "trainer.ranking_epochs=1"]


def _run_workers(base: Path, out: Path, scratch: Path, settings: list[str], n: int = 2
                 ) -> list[tuple[int, str, str]]:
    """``recflow train`` on ``n`` local workers (one TF_CONFIG each, ring all-reduce), waited for (all killed on a
    timeout); (exit code, stdout, stderr) of each. Output goes to files: a worker blocked on a full pipe would
    stall the other in its collectives."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    args = [a for s in ["trainer.distribution.strategy=multi_worker_mirrored",
                        "trainer.distribution.communication=ring", *settings] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "recflow", *args, "train", "--examples", str(base / "ex"), "--transform",
           str(base / "tf"), "--out", str(out)]
    procs, logs = [], []
    for i in range(n):
        env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
            "PYTHONPATH", "")]), TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": i}}))
        logs.append((out.parent.parent / f"worker{i}.out", out.parent.parent / f"worker{i}.err"))
        with logs[-1][0].open("w") as stdout, logs[-1][1].open("w") as stderr:
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=stdout, stderr=stderr))
    try:
        deadline = time.monotonic() + 480
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(code, o.read_text(), e.read_text()) for code, (o, e) in zip(codes, logs, strict=True)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ExampleGen and Transform outputs of a small simulated shop (with impressions, clicks and purchases)."""
    from recflow.features.transform import TransformConfig, run_transform

    base = tmp_path_factory.mktemp("shop")
    src = write_world(base / "src", n_users=120, sessions=6)
    run_example_gen(src, base / "ex", ExampleGenConfig(), ValidationConfig())
    run_transform(base / "ex", base / "tf", TransformConfig())
    return base


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("model, settings", [("sequence", SEQUENCE), ("two_tower", TWO_TOWER)])
def test_two_workers_on_localhost_train_in_step_and_the_chief_writes_one_bundle(
        shop: Path, tmp_path: Path, model: str, settings: list[str]) -> None:
    from recflow.models import load_recommender

    scratch, out = tmp_path / "scratch", tmp_path / "models" / "model"
    scratch.mkdir()
    out.parent.mkdir()
    started = time.perf_counter()
    done = _run_workers(shop, out, scratch, settings)
    seconds = time.perf_counter() - started
    for i, (code, _stdout, stderr) in enumerate(done):
        assert code == 0, f"worker {i} failed:\n{stderr[-4000:]}"
    assert done[0][1].splitlines()[0] == f"chief: wrote {out}"
    assert done[1][1].splitlines()[0] == f"worker: trained in step with the chief, which wrote {out}"
    metrics = [json.loads(stdout.splitlines()[1]) for _code, stdout, _stderr in done]
    for m in metrics:  # wall-clock rates differ between the two processes; everything learned is the same
        m.pop("retrieval_examples_per_second")
    assert metrics[0] == metrics[1]

    assert [p.name for p in out.parent.iterdir()] == ["model"]  # one bundle, no staging leftovers
    assert list(scratch.iterdir()) == []  # the other worker's copy was deleted
    report = json.loads((out / "training.json").read_text())
    assert report["config"]["retrieval_model"] == model
    assert report["distribution"] == {"strategy": "CollectiveAllReduceStrategy", "replicas_in_sync": 2,
                                      "workers": 2, "task": {"type": "worker", "index": 0}, "chief": True,
                                      "global_batch_size": 512}
    for stage in ("retrieval", "ranking"):  # each example once per epoch, the two workers' halves summed
        part = report[stage]
        assert part["examples_seen"] == [part["train_examples"]] * part["epochs_run"], stage
    # Validation metrics are read across the replicas (Keras would report the sum of the two workers' values).
    assert all(0.0 <= v <= 1.0 for v in report["ranking"]["history"]["val_auc"])
    if model == "sequence":
        assert report["history_ranking"]["epochs_run"] >= 1 and "history_ranker_eval_auc" in report["metrics"]
    else:
        assert all(0.0 <= v <= 1.0 for v in
                   report["retrieval"]["history"]["val_factorized_top_k/top_10_categorical_accuracy"])

    rec = load_recommender(out)
    lists = rec.recommend(["u0003", "a-new-user"], 5)
    assert [len(set(x)) for x in lists] == [5, 5]
    print(f"{model}, two workers: {seconds:.0f} s; retrieval {report['retrieval']['examples_per_second']:.0f} "
          f"examples/s ({report['retrieval']['train_examples']} examples x {report['retrieval']['epochs_run']} "
          "epochs)")
