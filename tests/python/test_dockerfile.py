"""The Dockerfile (targets `operator` and `worker`), checked without a container engine.

Images cannot be built on these machines, so the file is kept right by hadolint and by checking
its structure against the workspace it builds: the packages and binaries it names exist, the
builder's toolchain satisfies the workspace's rust-version, the runtime stages hold one binary,
run as a non-root user, install nothing and carry the OCI labels, and the build context keeps
what the build needs.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}

# target -> (package, binary, ports it serves): the contract with the chart and the operator.
TARGETS = {
    "operator": ("streamjob-operator", "streamjob-operator", {8080}),
    "worker": ("streamjob-worker", "streamjob-worker", {8081, 9249}),
}


# --- a small Dockerfile parser ----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (with defaults) and the stages, with line continuations joined."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not buf and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if buf and raw.lstrip().startswith("#"):
            continue  # comments inside a continued instruction
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, buf + raw))
        buf = ""
    for n, line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            assert m, f"line {n}: cannot parse FROM {args}"
            stages.append(Stage(name=(m[2] or str(len(stages))).lower(), base=m[1]))
        elif not stages:
            assert keyword == "ARG", f"line {n}: only ARG may precede the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, n))
    return global_args, stages


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), value)


@pytest.fixture(scope="module")
def dockerfile():
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    by_name = {s.name: s for s in stages}
    assert len(by_name) == len(stages), "two stages share a name"
    return global_args, by_name


def _workspace() -> dict:
    return tomllib.loads((ROOT / "Cargo.toml").read_text())


def _package_bins(package: str) -> set[str]:
    for member in _workspace()["workspace"]["members"]:
        manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        if manifest["package"]["name"] == package:
            return {b["name"] for b in manifest.get("bin", [])} or {package}
    raise AssertionError(f"the Dockerfile builds package {package!r}, which is not in the workspace")


def _stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base.lower() in stages:
        chain.append(stages[chain[-1].base.lower()])
    return chain


# --- hadolint -----------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint") or str(ROOT / ".local" / "venv" / "bin" / "hadolint")
    return subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hadolint_finds_nothing():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_waivers_are_few_and_explained():
    lines = DOCKERFILE.read_text().splitlines()
    waivers = [(i, l) for i, l in enumerate(lines) if "hadolint ignore" in l]
    assert len(waivers) <= 2, waivers
    for i, _ in waivers:
        assert lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], (
            f"line {i + 1}: a hadolint waiver needs a comment above it that says why"
        )


def test_the_lint_gate_can_fail(tmp_path):
    # The gate above would notice a regression: an unpinned base image and root user.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rust:latest\nRUN apt-get install -y cmake\nUSER root\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3002" in result.stdout


# --- structure ------------------------------------------------------------------------------------


def test_targets_exist_and_are_runtime_images(dockerfile):
    global_args, stages = dockerfile
    for target in TARGETS:
        assert target in stages, f"no `{target}` target"
        base = expand(stages[target].base, global_args)
        assert base.lower() not in stages, f"{target} must start from a runtime image, not a build stage"
        assert "distroless" in base or "-slim" in base, f"{target}: runtime {base} is not minimal"
        assert not base.startswith("rust:"), f"{target} would ship the compiler"


def test_builder_is_pinned_and_new_enough(dockerfile):
    global_args, stages = dockerfile
    rust = expand(stages["chef"].base, global_args)
    m = re.match(r"^rust:(\d+)\.(\d+)\.(\d+)-slim-(\w+)(@sha256:[a-f0-9]{64})?$", rust)
    assert m, f"builder {rust} must be pinned to an exact Rust version (rust:X.Y.Z-slim-<debian>)"
    need = tuple(int(x) for x in _workspace()["workspace"]["package"]["rust-version"].split("."))
    have = tuple(int(x) for x in m.groups()[:3])
    assert have[: len(need)] >= need, f"builder Rust {have} is older than rust-version {need}"
    # Same Debian release as the runtime, or the binaries' glibc/libssl would not match.
    runtime = expand(stages["operator"].base, global_args)
    debian = {"bookworm": "debian12", "trixie": "debian13"}[m[4]]
    assert debian in runtime, f"builder is {m[4]}, runtime {runtime}"
    chef = [i for i in stages["chef"].all("ARG") if i.args.startswith("CARGO_CHEF_VERSION=")]
    assert chef and re.fullmatch(r"CARGO_CHEF_VERSION=\d+\.\d+\.\d+", chef[0].args)
    assert any("--locked" in i.args and "cargo-chef" in i.args for i in stages["chef"].all("RUN"))


def test_dependencies_are_cooked_before_the_sources_are_copied(dockerfile):
    _, stages = dockerfile
    for target, (package, binary, _) in TARGETS.items():
        builder = _builder_of(stages, target)
        ins = builder.instructions
        cook = next(i for i, x in enumerate(ins) if x.keyword == "RUN" and "cargo chef cook" in x.args)
        copy_src = next(i for i, x in enumerate(ins) if x.keyword == "COPY" and x.args.split() == [".", "."])
        build = next(i for i, x in enumerate(ins) if x.keyword == "RUN" and "cargo build" in x.args)
        assert cook < copy_src < build, f"{builder.name}: cook, then COPY . ., then build"
        assert f"-p {package}" in ins[cook].args and "--release" in ins[cook].args


def _builder_of(stages: dict[str, Stage], target: str) -> Stage:
    copies = [i for i in stages[target].all("COPY") if i.args.startswith("--from=")]
    assert len(copies) == 1, f"{target}: expected exactly one COPY --from (the binary), got {copies}"
    src_stage = copies[0].args.split()[0].split("=", 1)[1].lower()
    assert src_stage in stages, f"{target} copies from unknown stage {src_stage}"
    return stages[src_stage]


def test_builds_name_real_packages_and_binaries(dockerfile):
    _, stages = dockerfile
    for target, (package, binary, _) in TARGETS.items():
        builder = _builder_of(stages, target)
        builds = [i for i in builder.all("RUN") if "cargo build" in i.args]
        assert len(builds) == 1
        argv = shlex.split(builds[0].args.split("&&")[0])
        assert "--release" in argv and "--locked" in argv
        pkg = argv[argv.index("-p") + 1]
        binname = argv[argv.index("--bin") + 1]
        assert (pkg, binname) == (package, binary)
        assert binname in _package_bins(pkg), f"package {pkg} has no binary {binname}"
        assert f"target/release/{binname}" in builds[0].args


def test_runtime_stages_hold_one_binary_as_non_root_with_labels(dockerfile):
    global_args, stages = dockerfile
    for target, (_, binary, ports) in TARGETS.items():
        stage = stages[target]
        assert not stage.all("RUN"), f"{target}: the runtime stage must install nothing"
        assert not stage.all("ADD")
        copy = next(i for i in stage.all("COPY") if i.args.startswith("--from="))
        dest = copy.args.split()[-1]
        assert dest == f"/usr/local/bin/{binary}"
        assert copy.args.split()[-2].endswith(f"/{binary}")
        users = stage.all("USER")
        assert users, f"{target}: no USER"
        uid = users[-1].args.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: USER must be a numeric non-root uid"
        entry = stage.all("ENTRYPOINT")[-1].args
        assert entry.startswith("["), f"{target}: ENTRYPOINT must be exec form (signals reach the binary)"
        assert yaml.safe_load(entry)[0] == dest
        labels = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", " ".join(i.args for i in stage.all("LABEL"))))
        assert OCI_LABELS <= labels, f"{target}: missing OCI labels {OCI_LABELS - labels}"
        exposed = {int(p.split("/")[0]) for i in stage.all("EXPOSE") for p in i.args.split()}
        assert exposed == ports, f"{target}: EXPOSE {exposed}, expected {ports}"


def test_worker_image_fits_the_pods_the_operator_creates(dockerfile):
    """The operator runs workers as `command: [streamjob-worker]` (a PATH lookup) with
    runAsNonRoot and its own uid constant: the image must agree on both."""
    global_args, stages = dockerfile
    worker = stages["worker"]
    env = " ".join(i.args for i in worker.all("ENV"))
    m = re.search(r"PATH=(\S+)", env)
    assert m, "worker stage sets no PATH"
    assert "/usr/local/bin" in m[1].split(":")
    children = (ROOT / "operator" / "src" / "planner" / "children.rs").read_text()
    run_as = re.search(r"const RUN_AS: i64 = (\d+);", children)
    assert run_as, "operator/src/planner/children.rs no longer defines RUN_AS: update this test"
    assert int(worker.all("USER")[-1].args.split(":")[0]) == int(run_as[1])
    assert '"streamjob-worker"' in children, "the operator no longer runs `streamjob-worker`"


def test_operator_port_and_uid_match_the_chart(dockerfile):
    _, stages = dockerfile
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["http"]["port"] in TARGETS["operator"][2]
    uid = int(stages["operator"].all("USER")[-1].args.split(":")[0])
    assert values["podSecurityContext"]["runAsUser"] == uid


def test_image_version_matches_the_workspace_and_the_chart(dockerfile):
    _, stages = dockerfile
    version = _workspace()["workspace"]["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version, "Chart appVersion (default image tag) != workspace version"
    for target in TARGETS:
        args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in stages[target].all("ARG")}
        assert args.get("VERSION") == version, f"{target}: ARG VERSION default != {version}"


def test_worker_builder_has_every_native_build_dependency_the_setup_installs(dockerfile):
    """scripts/setup.sh installs what the native code (librdkafka) needs to compile; the worker's
    builder needs the same, and the operator's builder none of it."""
    _, stages = dockerfile
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    apt = re.search(r"APT_PKGS=\(([^)]*)\)", setup)
    assert apt, "scripts/setup.sh has no APT_PKGS list"
    native = {p for p in apt[1].split() if p.endswith("-dev") or p in {"build-essential", "cmake", "pkg-config"}}
    assert native, "no native build packages found in scripts/setup.sh"

    def installed(stage: Stage) -> set[str]:
        pkgs: set[str] = set()
        for chain_stage in _stage_chain(stages, stage.name):
            for run in chain_stage.all("RUN"):
                if "apt-get install" in run.args:
                    part = run.args.split("apt-get install", 1)[1].split("&&")[0]
                    pkgs |= {w for w in part.split() if not w.startswith("-")}
        return pkgs

    worker_builder = _builder_of(stages, "worker")
    assert native <= installed(worker_builder), f"missing in {worker_builder.name}: {native - installed(worker_builder)}"
    assert not installed(_builder_of(stages, "operator")), "the operator builder must not need native libraries"


def test_builders_check_the_binaries_runtime_libraries(dockerfile):
    _, stages = dockerfile
    for target in TARGETS:
        builder = _builder_of(stages, target)
        checks = [i for i in builder.all("RUN") if "ldd" in i.args]
        assert checks, f"{builder.name}: no check that the binary only links what the runtime has"
    worker_env = " ".join(i.args for i in _builder_of(stages, "worker").all("ENV"))
    assert "LIBZ_SYS_STATIC=1" in worker_env, "zlib must be static: distroless cc-debian12 has no libz"


# --- build context --------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for this file: last match wins, `!` re-includes,
    a pattern matching a directory excludes everything under it."""
    result = False
    parts = path.split("/")
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                result = not neg
                break
    return result


def _dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_build_context_keeps_the_workspace_and_drops_the_rest():
    patterns = _dockerignore_patterns()
    needed = ["Cargo.toml", "Cargo.lock"]
    for member in _workspace()["workspace"]["members"]:
        needed.append(f"{member}/Cargo.toml")
        needed += [str(p.relative_to(ROOT)) for p in (ROOT / member).rglob("*.rs")]
    kept_out = [p for p in needed if _ignored(p, patterns)]
    assert not kept_out, f".dockerignore drops files the build needs: {kept_out[:10]}"
    for heavy in ["target/debug/x", ".git/HEAD", ".local/venv/bin/python", "charts/streamjob-operator/Chart.yaml"]:
        assert _ignored(heavy, patterns), f".dockerignore should exclude {heavy}"


def test_dockerignore_matcher():
    assert _ignored("target/debug/x", ["target"])
    assert _ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not _ignored("worker/src/lib.rs", ["target", "tests/python"])
    assert not _ignored("docs/keep.md", ["docs", "!docs/keep.md"])
