"""The six components: their typed interfaces, the shared step wrapper, the images they run in."""

import json
import re
from pathlib import Path

import pytest
from kfp import dsl

from components import agents_trainer, evaluator, example_gen, pusher, resolver, tfrs_trainer, track, transform
from components.step_run import STATUS_DIR_ENV, STEP_ORDER, read_status, step_run
from recflow.config import load_config
from recflow.errors import ValidationFailed

ROOT = Path(__file__).resolve().parents[1]
#: What the tasks that take the run id get (the heavy steps get none of it: they are cacheable).
TRACKED = {"tracking_config": "Dict", "tracking_uri": "String", "run_key": "String", "run_name": "String"}
RECORD = {"record": "system.Artifact@0.0.1"}


def _interface(module) -> tuple[dict[str, str], dict[str, str]]:
    spec = module.build("python:3.11").component_spec
    inputs = {name: s.type for name, s in (spec.inputs or {}).items()}
    outputs = {name: s.type for name, s in (spec.outputs or {}).items()}
    return inputs, outputs


@pytest.mark.parametrize(("module", "inputs", "outputs"), [
    (resolver, {"data_uri": "String", "model_store": "String"}, {"data_version": "String", "champion": "String"}),
    (example_gen, {"data_uri": "String", "data_version": "String", "example_gen_config": "Dict",
                   "validation_config": "Dict", "transform_config": "Dict", "beam_pipeline_args": "List"},
     {"examples": "system.Dataset@0.0.1", "statistics": "system.Metrics@0.0.1",
      "validation_summary": "system.Markdown@0.0.1", **RECORD}),
    (transform, {"examples": "system.Dataset@0.0.1", "beam_pipeline_args": "List", "transform_config": "Dict"},
     {"transformed": "system.Dataset@0.0.1", **RECORD}),
    (tfrs_trainer, {"examples": "system.Dataset@0.0.1", "transformed": "system.Dataset@0.0.1",
                    "trainer_config": "Dict"},
     {"model": "system.Model@0.0.1", **RECORD}),
    (agents_trainer, {"examples": "system.Dataset@0.0.1", "model": "system.Model@0.0.1", "policy_config": "Dict"},
     {"policy": "system.Model@0.0.1", **RECORD}),
    (evaluator, {"examples": "system.Dataset@0.0.1", "model": "system.Model@0.0.1",
                 "policy": "system.Model@0.0.1", "model_store": "String", "champion": "String",
                 "evaluator_config": "Dict", "policy_config": "Dict", "release_config": "Dict"},
     {"metrics": "system.Metrics@0.0.1", "report": "system.HTML@0.0.1", "evaluation": "system.Dataset@0.0.1",
      "blessing": "system.Artifact@0.0.1", **RECORD, "Output": "Boolean"}),
    (track, {"record": "system.Artifact@0.0.1", "data_uri": "String", "opens": "Boolean", **TRACKED},
     {"Output": "String"}),
    (pusher, {"transformed": "system.Dataset@0.0.1", "model": "system.Model@0.0.1",
              "policy": "system.Model@0.0.1", "evaluation": "system.Dataset@0.0.1",
              "blessing": "system.Artifact@0.0.1", "model_store": "String", "model_store_config": "Dict",
              "release_config": "Dict", **TRACKED},
     {"pushed": "system.Model@0.0.1", "Output": "String"}),
])
def test_component_interfaces(module, inputs, outputs):
    got_inputs, got_outputs = _interface(module)
    assert got_inputs == inputs
    assert got_outputs == outputs


def test_components_run_in_the_given_image_without_installing_kfp():
    component = tfrs_trainer.build("registry.example/recflow:gpu")
    container = component.component_spec.implementation.container
    assert container.image == "registry.example/recflow:gpu"
    assert "pip install" not in " ".join(container.command)


def test_step_run_records_success(tmp_path, capsys):
    sections = {"transform": {"batch_size": 21}, "tracking": {"experiment": "x"}}
    with step_run("transform", sections, status_dir=str(tmp_path)) as step:
        assert step.config.transform.batch_size == 21 and step.config.tracking.experiment == "x"
        with pytest.raises(AttributeError, match="does not take config section 'serving'"):
            step.config.serving  # noqa: B018  (a section the step did not declare)
        step.log_metrics({"rows": 10, "split": {"train": 8, "name": "x"}, "ok": True, "bad": float("nan")})
        step.note(where="here")
    record = read_status(tmp_path)["transform"]
    assert record["status"] == "succeeded" and record["index"] == 2
    assert record["metrics"] == {"rows": 10.0, "split.train": 8.0, "ok": 1.0}
    assert record["notes"] == {"where": "here"} and record["seconds"] >= 0
    out = capsys.readouterr().out
    assert "[2/6] transform: started" in out and "[2/6] transform: done in" in out


def test_step_run_turns_user_errors_into_exit_codes_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped, step_run("example_gen", {}, status_dir=str(tmp_path)):
        raise ValidationFailed("events.parquet: row 7: field price: must be >= 0")
    assert stopped.value.code == ValidationFailed.exit_code
    record = read_status(tmp_path)["example_gen"]
    assert record["status"] == "failed" and "row 7: field price" in record["error"]
    out = capsys.readouterr().out
    assert "[1/6] example_gen: error: events.parquet: row 7" in out and "Traceback" not in out


def test_step_run_keeps_bugs_loud(tmp_path):
    with pytest.raises(ZeroDivisionError), step_run("evaluator", {}, status_dir=str(tmp_path)):
        1 / 0  # noqa: B018
    assert read_status(tmp_path)["evaluator"]["error"] == "ZeroDivisionError: division by zero"


def test_a_step_record_round_trips_and_a_bad_one_is_a_named_error(tmp_path):
    from recflow.errors import DataError
    from recflow.step_record import RECORD_FILE, read_step_record, record_file

    (tmp_path / "report.json").write_text('{"a": 1}')
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "p.png").write_bytes(b"png")
    with step_run("transform", {"transform": {"batch_size": 21}}, status_dir=str(tmp_path / "status"),
                  record=str(tmp_path / "record")) as step:
        step.log_metrics({"rows": 3})
        step.log_curves({"m.loss": [3.0, 2.0]})
        step.log_artifact(tmp_path / "report.json", "transform")
        step.log_artifact(tmp_path / "plots", "plots", on_pipeline=True)
        step.log_artifact(tmp_path / "missing.json", "transform")  # skipped: nothing to copy
        step.set_tags({"verdict": "ok"}, on_pipeline=True)
        step.log_pipeline_metrics({"rows": 3})
    record = read_step_record(tmp_path / "record")
    assert record.step == "transform" and record.seconds >= 0 and record.metrics == {"rows": 3.0}
    assert record.config == {"transform": step.config.dump()["transform"]} and record.curves == {"m.loss": [3.0, 2.0]}
    assert (record.tags, record.parent_tags, record.parent_metrics) == ({"verdict": "ok"}, {"verdict": "ok"},
                                                                        {"rows": 3.0})
    assert [(a["artifact_path"], a["on_pipeline"]) for a in record.artifacts] == [("transform", False), ("plots", True)]
    assert record_file(tmp_path / "record", record.artifacts[1]).joinpath("p.png").read_bytes() == b"png"
    assert read_status(tmp_path / "status")["transform"]["execution_id"] == record.execution_id
    # a step that fails leaves no record (the orchestrator runs nothing downstream of it)
    with pytest.raises(SystemExit), step_run("agents_trainer", {}, status_dir=str(tmp_path / "status"),
                                             record=str(tmp_path / "failed")):
        raise ValidationFailed("policy.parquet: row 1: field reward: must be >= 0")
    assert not (tmp_path / "failed").exists()
    with pytest.raises(DataError, match="no step record"):
        read_step_record(tmp_path / "failed")
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / RECORD_FILE).write_text('{"format": "something-else/9"}')
    with pytest.raises(DataError, match=r"step_record.json: field format: expected 'recflow.step-record/1'"):
        read_step_record(tmp_path / "failed")


def test_the_resolver_names_what_the_data_and_the_champion_are_now(tmp_path):
    """Byte-identical tables have one data version wherever they are; a changed table another; a missing
    directory is not the resolver's error to raise (ExampleGen names it)."""
    from recflow.model_store import ModelStore
    from recflow.pipeline_inputs import champion_from, champion_version, data_version

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i1,click,2026\n")
    (tmp_path / "a" / "simulator.json").write_text('{"generated_at": "now"}')  # not data
    assert data_version(str(tmp_path / "a")) == data_version(str(tmp_path / "b"))
    assert data_version(str(tmp_path / "a")).startswith("sha256:")
    (tmp_path / "b" / "events.csv").write_text("user_id,item_id,event_type,timestamp\nu1,i2,click,2026\n")
    assert data_version(str(tmp_path / "a")) != data_version(str(tmp_path / "b"))
    assert data_version(str(tmp_path / "nope")).startswith("unreadable: ")
    assert data_version("").startswith("unreadable: ")

    assert champion_version("") == "" and champion_version(str(tmp_path / "store")) == ""
    store = ModelStore(str(tmp_path / "store"))
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "weights.bin").write_bytes(b"w")
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "blessing.json").write_text('{"blessed": true, "reasons": []}')
    first = store.push({"model": tmp_path / "part"}, tmp_path / "evaluation").bundle
    resolved = champion_version(str(tmp_path / "store"))
    assert champion_from(resolved) == first.version and resolved == f"{first.version}@{first.created}"
    store.push({"model": tmp_path / "part"}, tmp_path / "evaluation")
    assert champion_version(str(tmp_path / "store")) != resolved  # a new champion: a new evaluator input


def test_step_order_matches_the_dag():
    assert STEP_ORDER == ("example_gen", "transform", "tfrs_trainer", "agents_trainer", "evaluator", "pusher")


def test_example_gen_component_on_simulator_data(tmp_path, monkeypatch):
    from recflow.step_record import read_step_record, record_file

    config = load_config(None, ["simulator.users=60", "simulator.items=30", "simulator.days=3"])
    from recflow.simulator import generate_dataset

    generate_dataset(config.simulator, tmp_path / "data", progress=False)
    examples = dsl.Dataset(uri=str(tmp_path / "examples"))
    statistics = dsl.Metrics(uri=str(tmp_path / "statistics"))
    summary = dsl.Markdown(uri=str(tmp_path / "summary.md"))
    record = dsl.Artifact(uri=str(tmp_path / "record"))
    monkeypatch.setenv(STATUS_DIR_ENV, str(tmp_path / "status"))
    example_gen.example_gen(str(tmp_path / "data"), "sha256:abc", config.example_gen.model_dump(mode="json"),
                            config.validation.model_dump(mode="json"), config.transform.model_dump(mode="json"), [],
                            examples, statistics, summary, record)
    assert {"train.parquet", "eval.parquet", "test.parquet", "stats.json"} <= {
        p.name for p in (tmp_path / "examples").iterdir()}
    assert statistics.metadata and "examples written to" in Path(summary.path).read_text()
    # every output exists as a file (KFP's local cache treats an output without one as missing: no reuse)
    assert json.loads(Path(statistics.path).read_text()) == statistics.metadata
    status = read_status(tmp_path / "status")["example_gen"]
    assert status["status"] == "succeeded"
    # what the step wants tracked is in its record: metrics, config sections, copies of the files to log
    step = read_step_record(tmp_path / "record")
    assert step.step == "example_gen" and step.execution_id == status["execution_id"]
    assert step.metrics == status["metrics"] and step.metrics
    assert set(step.config) == {"example_gen", "validation", "transform"}
    assert step.tags["recflow.data_version"] == "sha256:abc"
    logged = {(a["artifact_path"], record_file(tmp_path / "record", a).name) for a in step.artifacts}
    assert ("example_gen", "stats.json") in logged
    assert all(record_file(tmp_path / "record", a).is_file() for a in step.artifacts)


# ----------------------------------------------------------------------------------------------------------
# The container images (infra/docker): no Docker engine here, so their text is checked.


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _lock_version(name: str) -> str:
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise AssertionError(f"{name} is not in requirements/lock.txt")


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfiles_install_the_runtime_lock(flavour):
    steps = _instructions(ROOT / "infra" / "docker" / f"Dockerfile.{flavour}")
    runs = " && ".join(args for word, args in steps if word == "RUN")
    copies = [args for word, args in steps if word == "COPY"]
    assert any("requirements/lock.txt" in c for c in copies)
    assert "lock-dev.txt" not in runs  # the test, bench and lint groups stay out of the images
    if flavour == "cpu":  # the complete lock exactly as written, every file hash-checked
        assert re.search(r"uv pip install --system --no-deps --require-hashes -r requirements/lock\.txt", runs)
    else:  # one resolution with the CUDA extra, under the lock's own overrides (tf-agents' pins)
        assert any("requirements/overrides.txt" in c for c in copies)
        assert re.search(r"uv pip install -r requirements/lock\.txt \S+ --overrides requirements/overrides\.txt", runs)
    assert re.search(r"uv pip install (--system )?--no-deps \.", runs)
    assert {"recflow recflow", "components components", "pipelines pipelines", "serving serving",
            "monitoring monitoring"} <= set(copies)
    # The lock is installed before recflow (so recflow's own loose ranges never pick versions).
    assert runs.index("requirements/lock.txt") < runs.index("--no-deps .")


def test_cpu_and_gpu_images_share_python_and_tensorflow():
    cpu = _instructions(ROOT / "infra" / "docker" / "Dockerfile.cpu")
    gpu = _instructions(ROOT / "infra" / "docker" / "Dockerfile.gpu")
    assert cpu[0] == ("FROM", "python:3.11-slim")
    assert gpu[0][0] == "FROM" and gpu[0][1].startswith("nvidia/cuda:")
    gpu_runs = " ".join(args for word, args in gpu if word == "RUN")
    assert "--python 3.11" in gpu_runs
    assert f'"tensorflow[and-cuda]=={_lock_version("tensorflow")}"' in gpu_runs
    for steps in (cpu, gpu):  # TFRS and TF-Agents need legacy Keras in the image too
        assert any(word == "ENV" and "TF_USE_LEGACY_KERAS=1" in args for word, args in steps)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfiles_copy_real_paths_and_import_what_the_steps_import(flavour):
    """Every COPY source exists in the repository (the build context is its root), and the image's smoke check
    imports the packages the components import at run time (the Pusher imports serving.pyfunc)."""
    steps = _instructions(ROOT / "infra" / "docker" / f"Dockerfile.{flavour}")
    for word, args in steps:
        if word == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile.{flavour}: COPY {source}: no such path"
    runs = " ".join(args for word, args in steps if word == "RUN")
    imported = set()
    for path in (ROOT / "components").rglob("*.py"):
        imported |= {m.split(".")[0] for m in re.findall(r"^\s*from (\w+(?:\.\w+)*) import", path.read_text(), re.M)}
    for package in sorted(imported & {"recflow", "components", "pipelines", "serving", "monitoring"}):
        assert f"COPY {package} {package}" in " ".join(f"{w} {a}" for w, a in steps), package
    assert "serving.pyfunc" in runs
