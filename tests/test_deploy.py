"""deploy/: the image, the cluster configs and the MLflow server fit each other and fit nbtl.

Every file under deploy/ is parsed (YAML documents, Dockerfiles line by line, the compose file with its
``${VAR:-default}`` interpolation) and the fields that tie the pieces together are checked against each other
and against the repository: pyproject.toml, ``nbtl.__version__``, the installed Ray, the search spaces and
nbtl's own argument parser; the image's `pip install /app` is replayed on its build context (a wheel build).
No Docker, Kubernetes or cloud account needed; a few seconds.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import nbtl
from nbtl.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE = "ghcr.io/nbtl/nbtl"
MLFLOW_IMAGE = "ghcr.io/nbtl/mlflow"
SHARED_MOUNT = "/mnt/nbtl"
RAY_GCS_PORT, RAY_DASHBOARD_PORT, MLFLOW_PORT = 6379, 8265, 5000
GPU = "nvidia.com/gpu"

# Fields of the KubeRay ray.io/v1 types (KubeRay 1.5-1.7) that these manifests may use; a typo in a field name
# is silently dropped by the API server, so catch it here.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
    "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
    "authOptions",
    "upgradeStrategy",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "idleTimeoutSeconds",
    "resources",
    "labels",
}


# ---------------------------------------------------------------------------------------------- readers


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def version() -> str:
    return pyproject()["project"]["version"]


def requirement(name: str) -> Requirement:
    for text in pyproject()["project"]["dependencies"]:
        req = Requirement(text)
        if req.name == name:
            return req
    raise AssertionError(f"pyproject.toml has no dependency {name!r}")


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def yaml_docs(relative: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d is not None]
    assert docs, f"deploy/{relative} holds no YAML document"
    return docs


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile(relative: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped (as Docker does)."""
    instructions, current = [], ""
    for raw in (DEPLOY / relative).read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, f"deploy/{relative} ends inside a continued line"
    return instructions


def dockerfile_args(relative: str) -> dict[str, str]:
    """Default of each ARG (a later bare `ARG NAME` in the stage keeps the global default)."""
    args = {}
    for keyword, rest in dockerfile(relative):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if default or name not in args:
                args[name] = default
    return args


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)


def nbtl_dockerfile_from(variant: str) -> str:
    args = dockerfile_args("docker/Dockerfile")
    frm = [rest for keyword, rest in dockerfile("docker/Dockerfile") if keyword == "FROM"]
    assert len(frm) == 1, "deploy/docker/Dockerfile: expected one FROM (one stage)"
    return substitute(frm[0], {**args, "VARIANT": variant})


def compose_interpolate(value: str) -> str:
    """docker compose's ${VAR:-default} / ${VAR-default} / ${VAR} with no variable set, and $$ -> $."""
    value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    return value.replace("$$", "$")


def compose() -> dict:
    doc = yaml_docs("mlflow/docker-compose.yaml")[0]

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return compose_interpolate(node) if isinstance(node, str) else node

    return walk(doc)


def server_options(argv: list[str]) -> dict[str, str | bool]:
    """``mlflow server`` options of an argv (after ``server``): --flag VALUE, or --flag for the switches."""
    assert argv and argv[0] == "server", f"not an `mlflow server` command: {argv}"
    switches = {
        "--serve-artifacts",
        "--no-serve-artifacts",
        "--artifacts-only",
        "--dev",
        "--disable-security-middleware",
        "--enable-workspaces",
        "--disable-workspaces",
    }
    options, rest = {}, list(argv[1:])
    while rest:
        flag = rest.pop(0)
        assert flag.startswith("--"), f"unexpected argument {flag!r} in `mlflow server` command"
        options[flag] = True if flag in switches else rest.pop(0)
    return options


def compose_mlflow_options() -> dict:
    return server_options([str(a) for a in compose()["services"]["mlflow"]["command"]])


def k8s_mlflow_container() -> dict:
    deployment = one(yaml_docs("mlflow/mlflow-k8s.yaml"), "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def k8s_mlflow_options() -> dict:
    container = k8s_mlflow_container()
    argv = [str(a) for a in container.get("command", [])] + [str(a) for a in container.get("args", [])]
    assert argv[0] == "mlflow", "the mlflow container must run `mlflow server ...`"
    return server_options(argv[1:])


def mlflow_service_url() -> str:
    service = one(yaml_docs("mlflow/mlflow-k8s.yaml"), "Service", "mlflow")
    (port,) = service["spec"]["ports"]
    return f"http://{service['metadata']['name']}:{port['port']}"


def host_allowed(patterns: str, host: str) -> bool:
    """MLflow 3's Host-header check (mlflow.server.security_utils.is_allowed_host_header)."""
    allowed = [p.strip() for p in patterns.split(",")]
    return "*" in allowed or any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in allowed)


def ray_cluster_specs() -> list[tuple[str, dict]]:
    cluster = one(yaml_docs("kuberay/raycluster.yaml"), "RayCluster")
    job = one(yaml_docs("kuberay/rayjob.yaml"), "RayJob")
    return [("raycluster.yaml", cluster["spec"]), ("rayjob.yaml", job["spec"]["rayClusterSpec"])]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return pods


def ray_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def space_file(path: str) -> Path:
    """A space path as the image sees it (/app/search_spaces/x.yaml) or as the repository does."""
    copies = {dest.rstrip("/"): src.rstrip("/") for src, dest in dockerfile_copies()}
    for dest, src in copies.items():
        if path.startswith(dest + "/"):
            path = src + path[len(dest) :]
    return REPO / path


def dockerfile_copies() -> list[tuple[str, str]]:
    """(source, destination in the image) of each COPY'd file or folder of deploy/docker/Dockerfile."""
    pairs = []
    for keyword, rest in dockerfile("docker/Dockerfile"):
        if keyword == "COPY":
            *sources, dest = [p for p in rest.split() if not p.startswith("--")]
            for src in sources:
                pairs.append((src, dest if src.endswith("/") or not dest.endswith("/") else dest + Path(src).name))
    return pairs


NBTL_COMMAND = re.compile(r"nbtl search \S+\.ya?ml[^\"`\n]*")


def nbtl_commands() -> list[tuple[str, str]]:
    """(where, command line) of every `nbtl search SPACE.yaml ...` under deploy/: entrypoints and docs."""
    job = one(yaml_docs("kuberay/rayjob.yaml"), "RayJob")
    found = [("kuberay/rayjob.yaml entrypoint", job["spec"].get("entrypoint", "(no spec.entrypoint)"))]
    for path in deploy_files():
        if path.suffix == ".md":
            text = path.read_text().replace("\\\n", " ")
            found += [(str(path.relative_to(DEPLOY)), m.group(0).strip()) for m in NBTL_COMMAND.finditer(text)]
    return found


def parse_nbtl(where: str, command: str):
    argv = shlex.split(command)
    assert argv[0] == "nbtl", f"{where}: runs {argv[0]!r}, not nbtl"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: nbtl's argument parser rejects {command!r}")


def gpu_worker_capacity() -> list[tuple[str, float, float]]:
    """(where, CPUs, GPUs) of each GPU worker kind: KubeRay worker groups and cluster.yaml node types."""
    kinds = []
    for source, spec in ray_cluster_specs():
        for group in spec["workerGroupSpecs"]:
            limits = ray_container(group["template"]["spec"])["resources"]["limits"]
            kinds.append((f"{source} {group['groupName']}", quantity(limits["cpu"]), quantity(limits.get(GPU, 0))))
    launcher = yaml_docs("ray-cluster/cluster.yaml")[0]
    for name, node in launcher["available_node_types"].items():
        if name != launcher["head_node_type"]:
            kinds.append((f"cluster.yaml {name}", node["resources"].get("CPU", 0), node["resources"].get("GPU", 0)))
    return kinds


# ------------------------------------------------------------------------------------------------ tests


def test_every_file_under_deploy_parses():
    files = deploy_files()
    assert files, "deploy/ is empty"
    for path in files:
        rel, text = str(path.relative_to(DEPLOY)), path.read_text()
        if path.suffix in (".yaml", ".yml"):
            assert all(isinstance(d, dict) for d in yaml_docs(rel)), f"{rel}: every document must be a mapping"
        elif path.name == "Dockerfile":
            instructions = dockerfile(rel)
            known = {
                "FROM",
                "ARG",
                "RUN",
                "COPY",
                "ADD",
                "ENV",
                "LABEL",
                "USER",
                "WORKDIR",
                "EXPOSE",
                "ENTRYPOINT",
                "CMD",
                "SHELL",
                "HEALTHCHECK",
                "VOLUME",
                "STOPSIGNAL",
                "ONBUILD",
            }
            assert {k for k, _ in instructions} <= known, f"{rel}: unknown instruction"
            assert next(k for k, _ in instructions if k != "ARG") == "FROM", f"{rel}: FROM must come first"
        elif path.name.endswith(".dockerignore"):
            assert [l for l in text.splitlines() if l.strip() and not l.startswith("#")], f"{rel} is empty"
        elif path.suffix == ".sh":
            if shutil.which("bash"):
                result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
                assert result.returncode == 0, f"{rel}: {result.stderr}"
            assert path.stat().st_mode & 0o111, f"{rel} is not executable"
        elif path.suffix == ".md":
            assert text.startswith("# "), f"{rel} should start with a title"
        elif path.suffix == ".env":
            for line in text.splitlines():
                assert not line.strip() or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line), (
                    f"{rel}: {line!r} is neither KEY=value nor a comment"
                )
        else:
            pytest.fail(f"deploy/{rel}: no check for this kind of file; add one to tests/test_deploy.py")


def test_readmes_name_every_file():
    top = (DEPLOY / "README.md").read_text()
    for path in deploy_files():
        rel = str(path.relative_to(DEPLOY))
        if rel != "README.md":
            assert rel in top, f"deploy/README.md does not mention {rel}"
    for folder in sorted({p.parent for p in deploy_files()} - {DEPLOY}):
        readme = folder / "README.md"
        assert readme.exists(), f"deploy/{folder.name}/ has no README.md"
        for path in folder.iterdir():
            if path.is_file() and path.name != "README.md":
                assert path.name in readme.read_text(), f"deploy/{folder.name}/README.md does not mention {path.name}"


def test_image_tag_is_the_nbtl_version_everywhere():
    assert version() == nbtl.__version__, "pyproject.toml and nbtl.__version__ disagree"
    allowed = {f"{IMAGE}:{version()}", f"{IMAGE}:{version()}-gpu"}
    seen = set()
    for path in deploy_files():
        for match in re.finditer(re.escape(IMAGE) + r"(?::([\w.\-]+))?", path.read_text()):
            if match.group(1):  # untagged mentions (IMAGE=..., ":<version>") are fine
                assert match.group(0) in allowed, f"{path.relative_to(REPO)}: {match.group(0)} is not one of {allowed}"
                seen.add(match.group(0))
    assert seen == allowed, f"deploy/ should name both images, names {seen}"
    docs = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert all(tag in docs for tag in allowed), "the Dockerfile's build lines should name both tags"
    assert dockerfile_args("docker/Dockerfile")["NBTL_VERSION"] == version()
    # build.sh tags with the version it reads from pyproject.toml: run its extraction line
    script = (DEPLOY / "docker" / "build.sh").read_text()
    assert f'IMAGE="${{IMAGE:-{IMAGE}}}"' in script
    line = next(l for l in script.splitlines() if l.startswith("VERSION="))
    out = subprocess.run(["bash", "-c", f'{line}; echo "$VERSION"'], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == version(), f"build.sh reads version {out.stdout.strip()!r} ({out.stderr})"


def test_every_node_runs_the_same_nbtl_image():
    launcher = yaml_docs("ray-cluster/cluster.yaml")[0]
    docker = launcher["docker"]
    images = {docker["image"], docker.get("head_image", docker["image"]), docker.get("worker_image", docker["image"])}
    images |= {
        n.get("docker", {}).get("worker_image", docker["image"]) for n in launcher["available_node_types"].values()
    }
    assert images == {f"{IMAGE}:{version()}-gpu"}, f"cluster.yaml: one -gpu nbtl image on every node, got {images}"
    for source, spec in ray_cluster_specs():
        images = {ray_container(pod)["image"] for _, pod in pod_specs(spec)}
        assert images == {f"{IMAGE}:{version()}-gpu"}, f"{source}: one -gpu nbtl image in every Pod, got {images}"


def test_ray_version_is_one_everywhere():
    args = dockerfile_args("docker/Dockerfile")
    ray = args["RAY_VERSION"]
    assert nbtl_dockerfile_from("") == f"rayproject/ray:{ray}-py311"
    assert nbtl_dockerfile_from("-gpu") == f"rayproject/ray:{ray}-py311-gpu"
    assert Version(ray) in requirement("ray").specifier, f"pyproject.toml's ray range does not admit {ray}"
    installed = Version(importlib.metadata.version("ray"))
    assert Version(ray).release[:2] == installed.release[:2], f"image Ray {ray}, installed Ray {installed}"
    python = re.fullmatch(r"py3(\d+)", args["PYTHON_TAG"])
    assert python and Version(f"3.{python.group(1)}") in SpecifierSet(pyproject()["project"]["requires-python"])
    install = next(rest for k, rest in dockerfile("docker/Dockerfile") if k == "RUN" and "pip install" in rest)
    pin = re.search(r'"ray\[([\w,]*)\]==\$\{RAY_VERSION\}"', install)
    assert pin, "the Dockerfile must install nbtl with ray==${RAY_VERSION}, keeping the base image's Ray"
    assert set(pin.group(1).split(",")) == requirement("ray").extras, "Ray extras differ from pyproject.toml's"
    for source, spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray, f"{source}: rayVersion {spec['rayVersion']} != image Ray {ray}"
    assert f'"ray[default]=={ray}"' in (DEPLOY / "ray-cluster" / "README.md").read_text()


def test_dockerfile_installs_the_repository():
    copies = dict(dockerfile_copies())
    needed = ["pyproject.toml", pyproject()["project"]["readme"], "nbtl/", "search_spaces/"]
    for src in needed:
        assert src in copies, f"the Dockerfile does not COPY {src}"
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which the repository lacks"
        assert copies[src].startswith("/app/"), f"{src} should go to /app/"
    runs = [rest for k, rest in dockerfile("docker/Dockerfile") if k == "RUN"]
    assert any("pip install" in r and " /app " in r for r in runs), "the Dockerfile must `pip install /app`"
    assert any(
        '"${WITH_FASHION_MNIST}" = "1"' in r and "apt-get install" in r and "dataset-fashion-mnist" in r for r in runs
    ), "dataset-fashion-mnist should be apt-installed under WITH_FASHION_MNIST"
    users = [rest for k, rest in dockerfile("docker/Dockerfile") if k == "USER"]
    assert users[-1] == "ray", "the image should run as rayproject's user `ray`, not root"
    # the build context is filtered by Dockerfile.dockerignore: everything the Dockerfile copies must pass it
    ignore = [
        l.strip()
        for l in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    ]
    assert ignore[0] == "*", "Dockerfile.dockerignore should exclude everything, then re-include"
    for src in needed:
        assert "!" + src.rstrip("/") in ignore, f"Dockerfile.dockerignore keeps {src} out of the build context"


def dockerignore_match(pattern: str, path: str) -> bool:
    """Docker's pattern syntax: ``*`` and ``?`` stay within one folder, ``**`` spans any number of folders."""
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.fullmatch(regex, path) is not None


def in_build_context(relative: str) -> bool:
    """Whether Dockerfile.dockerignore lets ``relative`` (a repository path) into the build context: the last
    pattern that matches the path or one of its parent folders decides, ``!`` re-includes."""
    patterns = [
        l.strip()
        for l in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if l.strip() and not l.strip().startswith("#")
    ]
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    kept = True
    for pattern in patterns:
        if any(dockerignore_match(pattern.lstrip("!"), prefix) for prefix in prefixes):
            kept = pattern.startswith("!")
    return kept


def test_image_installs_a_wheel_that_ships_heuristics_and_spaces(tmp_path):
    """The image's `pip install /app`, replayed: the files the build context lets through, COPY'd as the
    Dockerfile does, build a wheel holding the rules, the learned recommender, the meta-dataset and every search
    space, since the image deletes the sources after installing and `nbtl recommend` runs from the wheel alone."""
    from test_packaging import build_wheel, missing_from_wheel

    app = tmp_path / "app"
    for src, dest in dockerfile_copies():
        assert dest.startswith("/app/"), f"the Dockerfile copies {src} to {dest}, outside /app/"
        source = REPO / src
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        files = [p for p in files if p.exists() and in_build_context(str(p.relative_to(REPO)))]
        assert files, f"the Dockerfile copies {src}, which the build context (Dockerfile.dockerignore) lacks"
        for file in files:
            target = app / dest[len("/app/") :]
            target = target / file.relative_to(source) if source.is_dir() else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    assert not list(app.rglob("__pycache__")), "Dockerfile.dockerignore lets __pycache__ into the image"
    wheel = build_wheel(app, tmp_path / "wheel")
    assert missing_from_wheel(wheel) == [], "the image's nbtl wheel lacks shipped files"
    install = next(rest for k, rest in dockerfile("docker/Dockerfile") if k == "RUN" and "pip install" in rest)
    assert "rm -rf /app/nbtl /app/heuristics" in install and "cd / " in install, (
        "the image should drop /app's sources after installing and check the installed nbtl outside /app"
    )


def test_cluster_yaml_is_a_valid_ray_launcher_config():
    jsonschema = pytest.importorskip("jsonschema")
    schema = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"
    config = yaml_docs("ray-cluster/cluster.yaml")[0]
    jsonschema.validate(config, json.loads(schema.read_text()))
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU", 1) == 0, (
        "the head runs the driver only: resources {CPU: 0, GPU: 0}"
    )
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values()), "workers need GPUs"
    assert all(re.match(r"(g|p)\d", t["node_config"]["InstanceType"]) for t in workers.values()), (
        "GPU node types need a GPU instance type (g*/p*)"
    )
    assert config["max_workers"] >= sum(t.get("max_workers", 0) for t in workers.values())
    assert all(t["node_config"].get("ImageId") for t in types.values()), (
        "Ray's default AMI is Ubuntu 18.04: set ImageId"
    )
    head_start = " ".join(config["head_start_ray_commands"])
    for flag in (
        "--head",
        f"--port={RAY_GCS_PORT}",
        "--dashboard-host=0.0.0.0",
        f"--dashboard-port={RAY_DASHBOARD_PORT}",
    ):
        assert flag in head_start, f"head_start_ray_commands lacks {flag}"
    assert f"--address=$RAY_HEAD_IP:{RAY_GCS_PORT}" in " ".join(config["worker_start_ray_commands"])
    run_options = " ".join(config["docker"]["run_options"])
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in run_options, "the shared storage must be in every container"
    assert any(SHARED_MOUNT in c and "mount" in c for c in config["initialization_commands"])


def test_cluster_yaml_tracking_uri_reaches_the_compose_server():
    run_options = " ".join(yaml_docs("ray-cluster/cluster.yaml")[0]["docker"]["run_options"])
    uri = re.search(r"--env MLFLOW_TRACKING_URI=(\S+)", run_options).group(1)
    parts = urlsplit(uri)
    service = compose()["services"]["mlflow"]
    published = {int(p.split(":")[-2]): int(p.split(":")[-1]) for p in service["ports"]}
    assert parts.scheme == "http" and parts.port in published, f"{uri}: compose publishes {published}"
    assert published[parts.port] == int(compose_mlflow_options()["--port"])
    assert host_allowed(compose_mlflow_options()["--allowed-hosts"], parts.netloc), (
        f"the compose server's --allowed-hosts refuses Host {parts.netloc}"
    )


def test_kuberay_manifests_use_ray_io_v1_fields():
    for relative in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        for doc in yaml_docs(relative):
            if doc["kind"] in ("RayCluster", "RayJob"):
                assert doc["apiVersion"] == "ray.io/v1", f"{relative}: {doc['kind']} should use ray.io/v1"
            if doc["kind"] == "RayJob":
                assert set(doc["spec"]) <= RAYJOB_SPEC_FIELDS, f"{relative}: {set(doc['spec']) - RAYJOB_SPEC_FIELDS}"
                assert ("rayClusterSpec" in doc["spec"]) != ("clusterSelector" in doc["spec"]), (
                    f"{relative}: give rayClusterSpec or clusterSelector"
                )
    for source, spec in ray_cluster_specs():
        assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, f"{source}: unknown fields {set(spec) - RAYCLUSTER_SPEC_FIELDS}"
        assert spec.get("authOptions", {}).get("mode", "token") in ("token", "disabled")
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for group in spec["workerGroupSpecs"]:
            assert set(group) <= WORKER_GROUP_FIELDS, f"{source}: unknown fields {set(group) - WORKER_GROUP_FIELDS}"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{source}: replicas out of range"
        for group in groups:
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), (
                f"{source}: rayStartParams values must be strings"
            )


def test_rayjob_cluster_is_the_raycluster():
    (_, cluster), (_, job_cluster) = ray_cluster_specs()
    assert job_cluster == cluster, "rayjob.yaml's rayClusterSpec should be raycluster.yaml's spec"
    assert (
        one(yaml_docs("kuberay/raycluster.yaml"), "RayCluster")["metadata"]["name"]
        in (DEPLOY / "kuberay" / "README.md").read_text()
    )


def test_head_exposes_ray_ports_and_runs_no_trials():
    for source, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        ports = {p["containerPort"] for p in ray_container(head["template"]["spec"])["ports"]}
        assert {RAY_GCS_PORT, RAY_DASHBOARD_PORT} <= ports, f"{source}: head ports {ports}"
        params = head["rayStartParams"]
        assert params.get("port", str(RAY_GCS_PORT)) == str(RAY_GCS_PORT)
        assert params.get("dashboard-port", str(RAY_DASHBOARD_PORT)) == str(RAY_DASHBOARD_PORT)
        assert params["dashboard-host"] == "0.0.0.0"
        assert params["num-gpus"] == "0" and params["num-cpus"] == "0", f"{source}: trials must not land on the head"
        assert GPU not in ray_container(head["template"]["spec"])["resources"].get("limits", {})
    assert f"{RAY_DASHBOARD_PORT}:{RAY_DASHBOARD_PORT}" in (DEPLOY / "kuberay" / "README.md").read_text()


def test_gpu_worker_groups_request_gpus():
    for source, spec in ray_cluster_specs():
        assert spec["workerGroupSpecs"], f"{source}: no worker group"
        for group in spec["workerGroupSpecs"]:
            container = ray_container(group["template"]["spec"])
            limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
            assert int(limits.get(GPU, 0)) >= 1, f"{source} {group['groupName']}: no {GPU} limit"
            assert requests.get(GPU, limits[GPU]) == limits[GPU], f"{source}: GPU request != limit"
            assert container["image"].endswith("-gpu"), f"{source}: a GPU group needs the -gpu image"
            assert "num-gpus" not in group["rayStartParams"] or group["rayStartParams"]["num-gpus"] == str(limits[GPU])


def test_ray_pods_share_tracking_uri_and_storage():
    url = mlflow_service_url()
    claims = {
        d["metadata"]["name"]: d for d in yaml_docs("kuberay/storage.yaml") if d["kind"] == "PersistentVolumeClaim"
    }
    assert claims and all("ReadWriteMany" in c["spec"]["accessModes"] for c in claims.values()), (
        "storage.yaml: Ray Tune's storage must be a ReadWriteMany claim"
    )
    for source, spec in ray_cluster_specs():
        for where, pod in pod_specs(spec):
            container = ray_container(pod)
            assert env(container).get("MLFLOW_TRACKING_URI") == url, f"{source} {where}: MLFLOW_TRACKING_URI != {url}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert SHARED_MOUNT in mounts, f"{source} {where}: {SHARED_MOUNT} not mounted"
            volume = next(v for v in pod["volumes"] if v["name"] == mounts[SHARED_MOUNT])
            assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{source} {where}: not storage.yaml's claim"


@pytest.mark.parametrize("options", [compose_mlflow_options, k8s_mlflow_options], ids=["compose", "k8s"])
def test_mlflow_server_listens_on_5000_with_postgres_and_served_artifacts(options):
    opts = options()
    assert opts["--host"] == "0.0.0.0" and int(opts["--port"]) == MLFLOW_PORT
    assert opts.get("--serve-artifacts") is True and opts["--artifacts-destination"]
    backend = urlsplit(opts["--backend-store-uri"])
    assert backend.scheme.startswith("postgresql"), f"backend store {backend.scheme}, not PostgreSQL"
    if options is compose_mlflow_options:
        services = compose()["services"]
        assert backend.hostname in services and services[backend.hostname]["image"].startswith("postgres:")
        assert backend.port == 5432
        assert f"{MLFLOW_PORT}:{MLFLOW_PORT}" in services["mlflow"]["ports"]
        assert services["mlflow"]["depends_on"][backend.hostname]["condition"] == "service_healthy"
        assert (DEPLOY / "mlflow" / services["mlflow"]["build"] / "Dockerfile").exists()
    else:
        docs = yaml_docs("mlflow/mlflow-k8s.yaml")
        service = one(docs, "Service", backend.hostname)
        assert [p["port"] for p in service["spec"]["ports"]] == [backend.port]
        postgres = one(docs, "Deployment", backend.hostname)["spec"]["template"]["spec"]["containers"][0]
        assert postgres["image"].startswith("postgres:")
        assert {p["containerPort"] for p in postgres["ports"]} == {service["spec"]["ports"][0]["targetPort"]}
        # $(VAR) in the args is expanded by Kubernetes only from the container's own env
        container = k8s_mlflow_container()
        for var in re.findall(r"\$\((\w+)\)", " ".join(map(str, container["args"]))):
            assert var in {e["name"] for e in container["env"]}, f"$({var}) is not in the mlflow container's env"


def test_k8s_services_select_their_deployments_and_ports():
    docs = yaml_docs("mlflow/mlflow-k8s.yaml")
    assert mlflow_service_url() == f"http://mlflow:{MLFLOW_PORT}"
    for name in ("mlflow", "mlflow-postgres"):
        service, deployment = one(docs, "Service", name), one(docs, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), f"Service {name} selects no Pod of its Deployment"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = {p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, f"Service {name}: targetPort not exposed"
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert int(k8s_mlflow_options()["--port"]) == one(docs, "Service", "mlflow")["spec"]["ports"][0]["targetPort"]


def test_mlflow_allowed_hosts_admit_the_ray_side():
    host = urlsplit(mlflow_service_url()).netloc
    k8s = k8s_mlflow_options()["--allowed-hosts"]
    for name in (host, f"mlflow.default.svc.cluster.local:{MLFLOW_PORT}", f"localhost:{MLFLOW_PORT}", "10.1.2.3:5000"):
        assert host_allowed(k8s, name), f"mlflow-k8s.yaml's --allowed-hosts refuses Host {name}"
    assert not host_allowed(k8s, "evil.example.com:5000"), "--allowed-hosts should not admit every host"
    compose_hosts = compose_mlflow_options()["--allowed-hosts"]
    assert host_allowed(compose_hosts, f"localhost:{MLFLOW_PORT}") and host_allowed(compose_hosts, "10.0.0.10:5000")
    assert not host_allowed(compose_hosts, "evil.example.com:5000")


def test_mlflow_server_image_is_one_version():
    mlflow = dockerfile_args("mlflow/Dockerfile")["MLFLOW_VERSION"]
    assert Version(mlflow) in requirement("mlflow").specifier, f"pyproject.toml's mlflow range does not admit {mlflow}"
    installed = Version(importlib.metadata.version("mlflow"))
    assert Version(mlflow).major == installed.major, f"server MLflow {mlflow}, client MLflow {installed}"
    image = f"{MLFLOW_IMAGE}:{mlflow}"
    assert compose()["services"]["mlflow"]["image"] == image
    assert k8s_mlflow_container()["image"] == image
    for path in deploy_files():
        for match in re.finditer(re.escape(MLFLOW_IMAGE) + r":([\w.\-]+)", path.read_text()):
            assert match.group(0) == image, f"{path.relative_to(REPO)}: {match.group(0)} != {image}"


@pytest.mark.parametrize("where,command", nbtl_commands(), ids=[f"{w}#{i}" for i, (w, _) in enumerate(nbtl_commands())])
def test_nbtl_commands_are_accepted_by_nbtl(where, command):
    args = parse_nbtl(where, command)
    assert args.command == "search"
    space = space_file(args.space)
    assert space.exists() and space.parent == REPO / "search_spaces", f"{where}: no space file {args.space}"
    if args.data == "fashion-mnist":
        assert dockerfile_args("docker/Dockerfile")["WITH_FASHION_MNIST"] == "1", (
            f"{where} uses --data fashion-mnist, which the image leaves out"
        )
    if where.startswith("docker/"):
        return  # a local try-out of the image, not a cluster run
    assert args.address == "auto", f"{where}: without --address auto the driver starts its own embedded Ray"
    assert args.storage_path and (args.storage_path + "/").startswith(SHARED_MOUNT + "/"), (
        f"{where}: --storage-path must be on the shared mount {SHARED_MOUNT}"
    )
    if args.tracking_uri is not None and where.startswith("kuberay"):
        assert args.tracking_uri == mlflow_service_url(), f"{where}: --tracking-uri != {mlflow_service_url()}"
    resources = yaml.safe_load(space.read_text())["search"].get("resources", {})
    cpu = args.cpu if args.cpu is not None else resources.get("cpu", 1)
    gpu = args.gpu if args.gpu is not None else resources.get("gpu", 0)
    assert gpu > 0, f"{where}: a cluster search should give trials a GPU (--gpu)"
    for worker, cpus, gpus in gpu_worker_capacity():
        assert cpu <= cpus and gpu <= gpus, f"{where}: a trial ({cpu} CPU, {gpu} GPU) does not fit {worker}"


def test_rayjob_entrypoint_is_a_full_search():
    (where, command), *_ = nbtl_commands()
    args = parse_nbtl(where, command)
    assert args.tracking_uri == mlflow_service_url()
    assert space_file(args.space) == REPO / "search_spaces" / "default.yaml"
    assert command in (DEPLOY / "kuberay" / "README.md").read_text(), "kuberay/README.md should show the entrypoint"
