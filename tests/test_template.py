"""The Flex Template: metadata generated from the options, regexes that accept what they document,
one Beam version everywhere, an image built from the lock, and make targets that build and launch
it (checked as a dry run: `make -n`, no Google Cloud needed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
import tomllib
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.options import validate
from pipeline.tools import template_metadata
from pipeline.tools.template_metadata import NOT_PARAMETERS, PARAMETERS, option_infos

ROOT = Path(__file__).resolve().parents[1]
METADATA = ROOT / "templates" / "metadata.json"
DOCKERFILE = ROOT / "templates" / "Dockerfile"
LOCK = ROOT / "templates" / "requirements.lock"
DATAFLOW_MK = ROOT / "make" / "dataflow.mk"
REGENERATE = "run: .venv/bin/python -m pipeline.tools.template_metadata (make template-metadata)"


def _parameters() -> dict[str, dict[str, object]]:
    metadata = json.loads(METADATA.read_text(encoding="utf-8"))
    return {parameter["name"]: parameter for parameter in metadata["parameters"]}


def _regexes(name: str) -> list[str]:
    regexes = _parameters()[name]["regexes"]
    assert isinstance(regexes, list)
    return regexes


# --- metadata.json and the options class


def test_committed_metadata_is_generated_from_the_options() -> None:
    assert METADATA.exists(), REGENERATE
    assert METADATA.read_text(encoding="utf-8") == template_metadata.render(), (
        f"{METADATA.relative_to(ROOT)} drifted from pipeline/options.py; {REGENERATE}"
    )


def test_every_option_is_a_parameter_or_excluded_with_a_reason() -> None:
    options = {option.name for option in option_infos()}
    assert not PARAMETERS.keys() & NOT_PARAMETERS.keys()
    unclassified = options - PARAMETERS.keys() - NOT_PARAMETERS.keys()
    assert not unclassified, (
        f"classify {sorted(unclassified)} in pipeline/tools/template_metadata.py"
    )
    assert all(len(reason) > 20 for reason in NOT_PARAMETERS.values())
    assert set(_parameters()) == PARAMETERS.keys() <= options


def test_every_parameter_is_described_and_only_the_warehouse_is_required() -> None:
    for name, parameter in _parameters().items():
        assert parameter["label"], name
        assert isinstance(parameter["helpText"], str) and len(parameter["helpText"]) > 20, name
        assert parameter["regexes"], name
    required = {name for name, p in _parameters().items() if not p["isOptional"]}
    # Exactly one input is needed, which a per-parameter flag cannot say; validate() does.
    assert required == {"warehouse"}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_regexes_accept_the_examples_and_refuse_bad_values(name: str) -> None:
    spec = PARAMETERS[name]
    regexes = _regexes(name)
    assert spec.examples and spec.bad
    for example in spec.examples:
        assert all(re.fullmatch(regex, example) for regex in regexes), (name, example)
    for bad in spec.bad:
        assert not all(re.fullmatch(regex, bad) for regex in regexes), (name, bad)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_regexes_are_anchored_and_portable(name: str) -> None:
    for regex in _regexes(name):
        assert regex.startswith("^") and regex.endswith("$"), regex
        # Java checks them at launch: no lookaround, named groups or backreferences.
        assert not re.search(r"\(\?|\\[1-9]|\\k<", regex), regex


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_examples_are_valid_pipeline_options(name: str) -> None:
    inputs = {"input_files", "input_subscription", "input_topic"}
    for example in PARAMETERS[name].examples:
        args = {
            "warehouse": "bigquery:my-project.effectively_once",
            **(
                {}
                if name in inputs
                else {"input_subscription": "projects/my-project/subscriptions/events"}
            ),
            name: example,
        }
        options = PipelineOptions([f"--{key}={value}" for key, value in args.items()])
        assert validate(options) == [], (name, example)


def test_enum_parameters_list_the_options_choices() -> None:
    for option in option_infos():
        if option.name in PARAMETERS and option.choices:
            parameter = _parameters()[option.name]
            assert parameter["paramType"] == "ENUM"
            assert parameter["enumOptions"] == [{"value": c, "label": c} for c in option.choices]


def test_gcloud_accepts_the_metadata() -> None:
    """gcloud builds the template spec offline with --print-only; every field it recognises is
    kept, so equality means metadata.json has no field Dataflow would ignore."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.fail(
            "the Google Cloud CLI (gcloud) is needed, as for make run-streaming and deploys"
        )
    result = subprocess.run(
        [
            gcloud,
            "dataflow",
            "flex-template",
            "build",
            "gs://bucket-name/templates/t.json",
            "--image=europe-west1-docker.pkg.dev/my-project/effectively-once/pipeline:t",
            "--sdk-language=PYTHON",
            f"--metadata-file={METADATA}",
            "--print-only",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
    )
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("\n", 1)[1] if result.stdout.startswith("|") else result.stdout
    spec = json.loads(textwrap.dedent(body))
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"] == json.loads(METADATA.read_text(encoding="utf-8"))


# --- one Beam version, the lock and the image


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(requirement) for requirement in project["dependencies"]]


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _beam_version() -> str:
    (beam,) = [r for r in _runtime_requirements() if canonicalize_name(r.name) == "apache-beam"]
    (pin,) = beam.specifier
    assert pin.operator == "==", f"pyproject.toml must pin apache-beam with ==, not {beam}"
    return pin.version


def test_lock_satisfies_pyproject_runtime_dependencies() -> None:
    lock = _lock_pins()
    for requirement in _runtime_requirements():
        locked = lock.get(canonicalize_name(requirement.name))
        assert locked is not None and requirement.specifier.contains(locked, prereleases=True), (
            f"{LOCK.relative_to(ROOT)} has {requirement.name}=={locked}, pyproject.toml asks for"
            f" {requirement}; run: make lock"
        )
    assert lock["apache-beam"] == _beam_version()
    assert "duckdb" in lock


def test_lock_has_hashes_for_every_pin_and_was_made_for_python_3_11() -> None:
    text = LOCK.read_text(encoding="utf-8")
    assert "autogenerated by pip-compile with Python 3.11" in text
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text)
    pinned = [block for block in blocks if re.match(r"[A-Za-z0-9_.-]+==", block)]
    assert len(pinned) == len(_lock_pins()) > 10
    for block in pinned:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_sdk_image_carries_the_beam_version_and_python_of_pyproject() -> None:
    images = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    sdk = [image for image in images if image.startswith("apache/beam_python")]
    assert sdk == [f"apache/beam_python3.11_sdk:{_beam_version()}"], images
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "3.11" in project["requires-python"]


def test_docs_mention_only_the_pinned_beam_version() -> None:
    version = _beam_version()
    mention = re.compile(
        r"\b(?:Beam|apache-beam(?:\[[a-z,]+\])?==|beam_python3\.\d+_sdk:)\s?v?(\d+\.\d+(?:\.\d+)?)"
    )
    documents = [
        ROOT / "README.md",
        ROOT / "docs" / "DEPLOY.md",
        ROOT / "templates" / "README.md",
        ROOT / "terraform" / "README.md",
        DOCKERFILE,
    ]
    found = 0
    for document in documents:
        assert document.exists(), document
        for match in mention.finditer(document.read_text(encoding="utf-8")):
            found += 1
            assert version == match[1] or version.startswith(match[1] + "."), (
                f"{document.relative_to(ROOT)} mentions {match[0]!r}; the pin is {version}"
            )
    assert found >= 3


def test_dockerfile_installs_the_lock_then_the_package_then_checks() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    steps = [
        "COPY templates/requirements.lock",
        "pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock",
        "pip install --no-cache-dir --no-deps ./src",
        "pip check",
        "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py",
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)
    assert "COPY templates/main.py ./main.py" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    assert "/opt/google/dataflow/python_template_launcher" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


def test_the_template_entry_point_runs_the_pipeline() -> None:
    text = (ROOT / "templates" / "main.py").read_text(encoding="utf-8")
    assert "from pipeline.run import main" in text
    assert "sys.exit(main())" in text


# --- make targets (dry run)


def _make(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``make -n`` with the project's Makefile including make/dataflow.mk (a temporary copy that
    includes it when the real one does not yet)."""
    makefile = ROOT / "Makefile"
    text = makefile.read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    defaults = {"DATAFLOW_ENV": "/nonexistent/dataflow.env", "IMAGE_TAG": "test-tag"}
    assignments = [f"{k}={v}" for k, v in {**defaults, **variables}.items()]
    with tempfile.TemporaryDirectory() as folder:
        if not re.search(r"^-?include make/dataflow\.mk", text, re.MULTILINE):
            makefile = Path(folder) / "Makefile"
            makefile.write_text(text + "\ninclude make/dataflow.mk\n", encoding="utf-8")
        return subprocess.run(
            ["make", "--no-print-directory", "-n", "-f", str(makefile), *args, *assignments],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )


def _commands(output: str) -> list[list[str]]:
    return [shlex.split(line) for line in output.replace("\\\n", " ").splitlines() if line.strip()]


def _gcloud(output: str, *verb: str) -> list[str]:
    commands = [
        c for c in _commands(output) if c[:1] == ["gcloud"] and c[1 : 1 + len(verb)] == list(verb)
    ]
    assert len(commands) == 1, output
    return commands[0]


def _template_parameters(command: list[str]) -> dict[str, str]:
    pairs = [
        arg.removeprefix("--parameters=") for arg in command if arg.startswith("--parameters=")
    ]
    return dict(pair.split("=", 1) for pair in pairs)


STACK = {"PROJECT": "my-project", "REGION": "europe-west1"}
IMAGE = "europe-west1-docker.pkg.dev/my-project/effectively-once/pipeline:test-tag"
TEMPLATE = "gs://my-project-effectively-once/templates/effectively-once-test-tag.json"


def test_make_image_and_template_dry_run() -> None:
    result = _make("image", "template", **STACK)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    build = _gcloud(result.stdout, "builds", "submit")
    assert f"--tag={IMAGE}" in build and "--project=my-project" in build
    template = _gcloud(result.stdout, "dataflow", "flex-template", "build")
    assert template[4] == TEMPLATE
    assert {
        f"--image={IMAGE}",
        "--sdk-language=PYTHON",
        "--metadata-file=templates/metadata.json",
    } <= set(template)
    assert "-m pipeline.tools.template_metadata --check" in result.stdout


def test_make_launch_streams_at_least_once_with_streaming_engine_by_default() -> None:
    result = _make("launch", **STACK)
    assert result.returncode == 0, result.stderr
    run = _gcloud(result.stdout, "dataflow", "flex-template", "run")
    assert run[4] == "effectively-once-streaming"
    assert "--enable-streaming-engine" in run
    assert "--additional-experiments=streaming_mode_at_least_once" in run
    assert f"--template-file-gcs-location={TEMPLATE}" in run
    assert (
        "--service-account-email=effectively-once-worker@my-project.iam.gserviceaccount.com" in run
    )
    assert "--update" not in run
    parameters = _template_parameters(run)
    assert parameters.pop("sdk_container_image") == IMAGE  # Beam's option: workers use the image
    assert parameters == {
        "input_subscription": "projects/my-project/subscriptions/effectively-once-events-dataflow",
        "warehouse": "bigquery:my-project.effectively_once",
        "bigquery_staging_dataset": "my-project.effectively_once_staging",
    }
    for name, value in parameters.items():
        assert all(re.fullmatch(regex, value) for regex in _regexes(name)), (name, value)


def test_make_launch_exactly_once_update_and_extra_parameters() -> None:
    result = _make(
        "launch",
        **STACK,
        STREAMING_MODE="exactly_once",
        UPDATE="1",
        TRANSFORM_NAME_MAPPINGS="Old=New",
        PARAMETERS="window_size_seconds=300 log_level=INFO",
    )
    assert result.returncode == 0, result.stderr
    run = _gcloud(result.stdout, "dataflow", "flex-template", "run")
    assert "--enable-streaming-engine" in run
    assert not any("streaming_mode_at_least_once" in arg for arg in run)
    assert {"--update", "--transform-name-mappings=Old=New"} <= set(run)
    parameters = _template_parameters(run)
    assert parameters["window_size_seconds"] == "300" and parameters["log_level"] == "INFO"
    assert set(parameters) - {"sdk_container_image"} <= set(_parameters())


def test_make_launch_batch_reads_files_into_the_same_tables() -> None:
    result = _make("launch-batch", **STACK, INPUT_FILES="gs://landing-bucket/events/*.jsonl")
    assert result.returncode == 0, result.stderr
    run = _gcloud(result.stdout, "dataflow", "flex-template", "run")
    assert run[4].startswith("effectively-once-backfill-")
    assert "--enable-streaming-engine" not in run
    assert not any("streaming_mode" in arg for arg in run)
    parameters = _template_parameters(run)
    assert parameters["input_files"] == "gs://landing-bucket/events/*.jsonl"
    assert "input_subscription" not in parameters
    assert parameters["warehouse"] == "bigquery:my-project.effectively_once"


@pytest.mark.parametrize(
    ("target", "variables", "message"),
    [
        ("launch", {"REGION": "r"}, "PROJECT is required"),
        ("image", {"PROJECT": "my-project"}, "REGION is required"),
        ("launch-batch", STACK, "INPUT_FILES is required"),
        ("launch", {**STACK, "STREAMING_MODE": "at-most-once"}, "STREAMING_MODE must be"),
    ],
)
def test_make_targets_refuse_missing_or_bad_variables(
    target: str, variables: dict[str, str], message: str
) -> None:
    result = _make(target, **variables)
    assert result.returncode != 0
    assert message in result.stderr


def test_every_make_variable_is_documented_in_the_header() -> None:
    text = DATAFLOW_MK.read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]  # the comment block at the top
    assigned = set(re.findall(r"^([A-Z][A-Z_]*) \?=", text, re.MULTILINE))
    assigned |= set(re.findall(r"^ifeq \(\$\(origin ([A-Z_]+)\),undefined\)", text, re.MULTILINE))
    assert {"PROJECT", "REGION", "STREAMING_MODE", "INPUT_FILES", "IMAGE_TAG"} <= assigned
    undocumented = [
        name for name in sorted(assigned) if not re.search(rf"^#\s+{name}\s", header, re.MULTILINE)
    ]
    assert not undocumented, f"document {undocumented} at the top of make/dataflow.mk"
    assert re.search(r"^STREAMING_MODE \?= at_least_once$", text, re.MULTILINE)


def test_make_reads_the_terraform_outputs_and_the_command_line_wins(tmp_path: Path) -> None:
    env = tmp_path / "dataflow.env"
    env.write_text(
        "PROJECT := other-project\nREGION := us-east1\nBUCKET := custom-bucket\n"
        "SUBSCRIPTION := projects/other-project/subscriptions/custom-events\n",
        encoding="utf-8",
    )
    result = _make("launch", DATAFLOW_ENV=str(env), REGION="europe-west4")
    assert result.returncode == 0, result.stderr
    run = _gcloud(result.stdout, "dataflow", "flex-template", "run")
    assert {"--project=other-project", "--region=europe-west4"} <= set(run)
    assert "--staging-location=gs://custom-bucket/staging" in run
    parameters = _template_parameters(run)
    assert parameters["input_subscription"] == "projects/other-project/subscriptions/custom-events"
