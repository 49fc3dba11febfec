"""The deployment files of SPEC 10 (``Dockerfile``, ``deploy/``), checked as far as this machine
allows: it has no Docker daemon and no Kubernetes, so no image is built, compose is not run and
the Helm chart is not rendered here. What is checked, offline and in seconds:

- every YAML file parses;
- the compose file validates against the Compose Specification's JSON schema, the copy that the
  npm package ``dclint`` ships (``schemas/compose.schema.json``; installed by ``npm ci`` from
  ``deploy/package-lock.json``), and ``dclint`` itself reports no error in it (its style warnings
  are not enforced). Without Node.js this test skips, unless ``GRSAI_REQUIRE_NODE=1`` (CI);
- the Dockerfile, read by ``dockerfile-parse``: the base image is the Python minor version the
  project is checked with, the package is installed with ``-c constraints.txt``, the last USER is
  not root, the command is ``dagster code-server start`` on the module ``workspace.yaml`` loads;
- the instance files (root ``dagster.yaml``, ``deploy/dagster.yaml``) load with Dagster's own
  instance config schema, their run coordinator and Docker run launcher are built from their
  config by Dagster (``ConfigurableClassData.rehydrate``, which validates against the class's
  schema; nothing connects anywhere), and the storage validates against dagster-postgres';
- both workspace files validate with Dagster's workspace schema;
- the compose topology agrees with the instance and the image: the run launcher's network and
  volume are the compose ones, every variable it hands to a run is set on the daemon, the
  services run the CLI commands that exist;
- the Helm values: no registry package ships the Dagster chart's ``values.schema.json`` (the
  chart is published only in Dagster's Helm repository), so they are NOT validated against it.
  What is checked: the run-queue and run-monitoring settings equal the root ``dagster.yaml``'s and
  validate against Dagster's own schemas once written the way the chart's template writes them,
  the user deployment runs ``dagster code-server start`` on the same module and port, and no
  secret is in the values;
- every ``GRSAI_*`` name in the deployment files is a setting of ``grsai_pipeline/config.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._core.launcher import RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator, RunCoordinator
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster._serdes import ConfigurableClassData
from dagster_docker import DockerRunLauncher
from dagster_postgres import DagsterPostgresStorage
from dockerfile_parse import DockerfileParser

from grsai_pipeline.cli import cli
from grsai_pipeline.config import Settings
from grsai_pipeline_tests.conftest import REPO_ROOT
from grsai_pipeline_tests.e2e.webapp import node_and_npm, npm_ci

DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
CODE_SERVER_PORT = 4000
PIPELINE_SERVICES = {"migrate", "code-server", "webserver", "daemon", "webhook", "api"}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _deploy_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if "node_modules" not in p.parts)


def _root_workspace_module() -> tuple[str, str]:
    target = _yaml(REPO_ROOT / "workspace.yaml")["load_from"][0]["python_module"]
    return target["module_name"], target["attribute"]


@pytest.fixture(autouse=True)
def _pg_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance files read DAGSTER_PG_URL; validation needs it set, nothing connects."""
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://dagster:secret@db:5432/dagster")


def test_every_deployment_yaml_file_parses() -> None:
    files = [REPO_ROOT / "dagster.yaml", REPO_ROOT / "workspace.yaml", *_deploy_yaml_files()]
    assert {p.relative_to(REPO_ROOT).as_posix() for p in files} >= {
        "deploy/dagster.yaml",
        "deploy/workspace.yaml",
        "deploy/docker-compose.yaml",
        "deploy/helm/values.yaml",
    }
    for path in files:
        assert isinstance(_yaml(path), dict), path


# --- the image ------------------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), env_replace=True)


def _instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [str(i["value"]) for i in parser.structure if i["instruction"] == name]


def test_the_image_is_built_on_our_python_with_the_pinned_versions() -> None:
    parser = _dockerfile()
    python = _checked_python_version()
    # Every stage starts from the official image of the Python minor version we check with.
    assert parser.parent_images, "no FROM"
    for image in parser.parent_images:
        assert re.fullmatch(rf"python:{re.escape(python)}-slim-[a-z]+", image), image
    installs = [run for run in _instructions(parser, "RUN") if "pip install" in run]
    assert installs and all("-c constraints.txt" in run for run in installs), installs
    copied = " ".join(_instructions(parser, "COPY"))
    for needed in ("pyproject.toml", "constraints.txt", "grsai_pipeline"):
        assert needed in copied
    assert parser.envs.get("DAGSTER_HOME"), "DAGSTER_HOME is not set in the image"


def _checked_python_version() -> str:
    """The Python minor version mypy checks against (pyproject.toml's tool.mypy)."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["tool"]["mypy"]["python_version"])


def test_the_image_runs_as_a_user_and_serves_the_code_location() -> None:
    parser = _dockerfile()
    users = _instructions(parser, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    command = json.loads(parser.cmd)
    assert command[:3] == ["dagster", "code-server", "start"], command
    module, attribute = _root_workspace_module()
    assert _option(command, "-m") == module
    assert _option(command, "-a") == attribute
    assert _option(command, "-h") == "0.0.0.0"
    assert int(_option(command, "-p")) == CODE_SERVER_PORT
    assert str(CODE_SERVER_PORT) in _instructions(parser, "EXPOSE")[0].split()
    (health,) = _instructions(parser, "HEALTHCHECK")
    assert "grpc-health-check" in health and f'"{CODE_SERVER_PORT}"' in health


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in (".venv*", "videos/", "*.db", "**/node_modules", ".env", ".git"):
        assert pattern in ignored, pattern


# --- docker compose --------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose = _yaml(COMPOSE)
    assert isinstance(compose, dict)
    return compose


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), service
    return [str(part) for part in command]


def test_compose_runs_the_topology_of_spec_10() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", *PIPELINE_SERVICES}
    assert services["postgres"]["image"].startswith("postgres:")
    assert "command" not in services["code-server"], "the code server is the image's CMD"
    assert _command(services["webserver"])[:1] == ["dagster-webserver"]
    assert _command(services["daemon"])[:2] == ["dagster-daemon", "run"]
    for name in ("webserver", "daemon"):
        assert _option(_command(services[name]), "-w") == "workspace.yaml"
    # The pipeline's own commands are the CLI's, with the options they pass.
    for name, path in {
        "migrate": ("db", "init"),
        "webhook": ("webhook", "serve"),
        "api": ("api", "serve"),
    }.items():
        command = _command(services[name])
        assert command[0] == "grsai-pipeline"
        assert tuple(command[1:3]) == path
        click_command = _cli_command(path)
        options = {opt for param in click_command.params for opt in getattr(param, "opts", [])}
        assert {part for part in command[3:] if part.startswith("--")} <= options, command


def _cli_command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    context = click.Context(cli)
    for name in path:
        assert isinstance(command, click.Group), path
        found = command.get_command(context, name)
        assert found is not None, f"grsai-pipeline has no command {' '.join(path)}"
        command = found
    return command


def test_compose_and_its_instance_agree() -> None:
    compose = _compose()
    services = compose["services"]
    launcher = _yaml(DEPLOY / "dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    config = launcher["config"]
    # Runs' containers join the compose network and mount the compose volume, by name.
    assert config["network"] == compose["networks"]["grsai"]["name"]
    (mount,) = config["container_kwargs"]["volumes"]
    assert mount.split(":")[0] == compose["volumes"]["videos"]["name"]
    # DockerRunLauncher reads each name from the daemon's environment and fails a run when one
    # is missing: the daemon sets every one, and so does every process that runs pipeline code.
    for name in ("daemon", "code-server", "migrate", "webhook", "api"):
        environment = services[name]["environment"]
        assert set(config["env_vars"]) <= set(environment), name
    # The workspace points at the code server's gRPC port.
    (server,) = [entry["grpc_server"] for entry in _yaml(DEPLOY / "workspace.yaml")["load_from"]]
    assert server["host"] == "code-server" and server["port"] == CODE_SERVER_PORT
    assert "DAGSTER_CURRENT_IMAGE" in services["code-server"]["environment"]
    # Secrets are interpolated from deploy/.env, never written in the file.
    environment = services["daemon"]["environment"]
    for name in ("GRSAI_API_KEY", "GRSAI_WEBHOOK_SECRET", "GRSAI_LINK_SECRET"):
        assert str(environment[name]).startswith("${" + name), name
    for name in ("DAGSTER_PG_URL", "GRSAI_DATABASE_URL"):
        assert ":${POSTGRES_PASSWORD" in environment[name], name


def test_env_example_holds_placeholders_of_variables_compose_reads() -> None:
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    compose_text = COMPOSE.read_text(encoding="utf-8")
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    assert {"POSTGRES_PASSWORD", "GRSAI_API_KEY"} <= set(names)
    for name in names:
        assert "${" + name in compose_text, f"{name} in .env.example is not read by compose"
    if shutil.which("git") and (REPO_ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO_ROOT, check=False
        )
        assert ignored.returncode == 0, "deploy/.env would be committed"


@pytest.mark.slow
def test_compose_validates_against_the_compose_specification_schema() -> None:
    node, npm = node_and_npm()
    npm_ci(npm, DEPLOY)
    schema_path = DEPLOY / "node_modules" / "dclint" / "schemas" / "compose.schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    # Its $schema names draft-07 without the trailing '#', which jsonschema does not recognise.
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    # The same schema catches a misspelt key (the check is not vacuous).
    broken = _compose()
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(validator.iter_errors(broken))
    # dclint's own rules (schema, duplicate names and ports...): no error; warnings are style.
    linted = subprocess.run(
        [node, str(DEPLOY / "node_modules" / "dclint" / "bin" / "dclint.cjs"), COMPOSE.name],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        # Plain text: with CI=true set (as .ci/run is run) it colours its summary.
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    summary = re.sub(r"\x1b\[[0-9;]*m", "", linted.stdout)
    assert "(0 errors" in summary or "problems" not in summary, summary


# --- the Dagster instance and workspace files -----------------------------------------------


@pytest.mark.parametrize("folder", [REPO_ROOT, DEPLOY], ids=["root", "deploy"])
def test_instance_file_loads_with_dagsters_schema(folder: Path) -> None:
    config, custom_class = dagster_instance_config(str(folder))
    assert custom_class is None
    result = validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    coordinator = _rehydrate(config["run_coordinator"], RunCoordinator)
    assert isinstance(coordinator, QueuedRunCoordinator)
    if folder == DEPLOY:
        launcher = _rehydrate(config["run_launcher"], RunLauncher)
        assert isinstance(launcher, DockerRunLauncher)
    assert config["run_monitoring"]["enabled"] is True


def _rehydrate(section: dict[str, Any], as_type: type[Any]) -> Any:
    """Import the class and build it from its config, validated against its own schema."""
    data = ConfigurableClassData(
        section["module"], section["class"], yaml.safe_dump(section.get("config") or {})
    )
    return data.rehydrate(as_type=as_type)


def test_the_compose_instance_is_the_root_instance_with_the_docker_launcher() -> None:
    root = _yaml(REPO_ROOT / "dagster.yaml")
    deploy = _yaml(DEPLOY / "dagster.yaml")
    assert "run_launcher" not in root
    assert {key: value for key, value in deploy.items() if key != "run_launcher"} == root


@pytest.mark.parametrize("path", [REPO_ROOT / "workspace.yaml", DEPLOY / "workspace.yaml"])
def test_workspace_file_validates(path: Path) -> None:
    ensure_workspace_config(_yaml(path), str(path))


# --- the Helm values -------------------------------------------------------------------------


def _helm() -> dict[str, Any]:
    values = _yaml(HELM_VALUES)
    assert isinstance(values, dict)
    return values


def test_helm_values_deploy_the_image_with_the_kubernetes_launcher_and_external_postgres() -> None:
    values = _helm()
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlHost"]
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True
    (deployment,) = user_code["deployments"]
    module, attribute = _root_workspace_module()
    args = deployment["codeServerArgs"]
    assert _option(args, "-m") == module and _option(args, "-a") == attribute
    assert deployment["port"] == CODE_SERVER_PORT
    assert deployment["podSecurityContext"]["runAsUser"] != 0
    # The settings, the API key among them, come from a Kubernetes secret, in the code server
    # and in every run's pod.
    secret = deployment["envSecrets"][0]["name"]
    assert {"name": secret} in launcher["envSecrets"]
    assert "GRSAI_API_KEY" not in json.dumps(values)


def test_helm_values_keep_the_root_instances_run_limits_and_monitoring() -> None:
    root = _yaml(REPO_ROOT / "dagster.yaml")
    daemon = _helm()["dagsterDaemon"]
    assert daemon["enabled"] is True and daemon["runCoordinator"]["enabled"] is True
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    # What the chart's template writes into the run coordinator's config (the keys in snake
    # case, the tag limits as they are), validated by Dagster's queued run coordinator.
    written = {
        "max_concurrent_runs": queued["maxConcurrentRuns"],
        "tag_concurrency_limits": queued["tagConcurrencyLimits"],
        "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
    }
    result = validate_config(QueuedRunCoordinator.config_type(), written)
    assert result.success, result.errors
    runs = root["concurrency"]["runs"]
    assert written["max_concurrent_runs"] == runs["max_concurrent_runs"]
    assert written["tag_concurrency_limits"] == runs["tag_concurrency_limits"]
    assert (
        written["dequeue_interval_seconds"]
        == root["run_coordinator"]["config"]["dequeue_interval_seconds"]
    )
    monitoring = daemon["runMonitoring"]
    written_monitoring = {_snake(key): value for key, value in monitoring.items()}
    assert written_monitoring == root["run_monitoring"]
    schema = dagster_instance_config_schema()["run_monitoring"].config_type
    result = validate_config(schema, written_monitoring)
    assert result.success, result.errors


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# --- names -----------------------------------------------------------------------------------


def test_every_grsai_setting_named_in_the_deployment_files_exists() -> None:
    settings = {field.alias for field in Settings.model_fields.values()}
    files = [
        DOCKERFILE,
        DEPLOY / ".env.example",
        *(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".sql")),
    ]
    named: set[str] = set()
    for path in files:
        if "node_modules" in path.parts:
            continue
        named |= set(re.findall(r"\bGRSAI_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    assert named, "no GRSAI_ setting found: the search is broken"
    assert named <= settings, sorted(named - settings)
