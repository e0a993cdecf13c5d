"""A small Dockerfile reader and a replay of its install and start steps outside Docker.

There is no Docker engine in CI, so the image is proven by doing what the Dockerfile says on the
host: the builder stage's ENV, WORKDIR, COPY (filtered through .dockerignore) and RUN steps (with
their bind and cache mounts) run in a temporary directory that stands in for the image's root,
and the final stage's ENV, WORKDIR, ENTRYPOINT, CMD and HEALTHCHECK are then used to start the
service from the virtual environment the builder produced.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# The PATH of the official python images (before the Dockerfile prepends to it).
IMAGE_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV, ...
    value: str  # everything after the keyword, continuation lines joined
    line: int

    def flags_and_rest(self) -> tuple[dict[str, list[str]], str]:
        """Split leading ``--flag=value`` options (e.g. ``--mount=...``, ``--from=...``) off."""
        flags: dict[str, list[str]] = {}
        rest = self.value
        while True:
            m = re.match(r"--([a-z-]+)=(\S+)\s+", rest)
            if not m:
                return flags, rest
            flags.setdefault(m.group(1), []).append(m.group(2))
            rest = rest[m.end() :]

    def exec_form(self) -> list[str]:
        data = json.loads(self.value)
        assert isinstance(data, list) and all(isinstance(x, str) for x in data), self
        return data


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def last_of(self, keyword: str) -> Instruction:
        """The last instruction of ``keyword``, failing the test when the stage has none."""
        found = self.last(keyword)
        assert found is not None, f"no {keyword} in stage {self.name}"
        return found

    def env(self) -> dict[str, str]:
        """ENV lines in order (later wins); ``$VAR``/``${VAR}`` refer to earlier values."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.value):
                key, sep, val = token.partition("=")
                assert sep, f"line {ins.line}: use ENV KEY=value"
                out[key] = val
        return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, comments dropped, continuation lines joined."""
    logical: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (parser directives too) and blank lines, even inside continuations
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        logical.append((start, " ".join(p for p in buf if p)))
        buf = []
    assert not buf, "dangling line continuation at the end of the Dockerfile"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in logical:
        keyword, _, value = content.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            parts = value.split()
            base = _subst(parts[0], args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may precede the first FROM"
            key, _, default = value.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value, line))
    return args, stages


def _subst(value: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, value)


def load() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


# --- .dockerignore ----------------------------------------------------------------------------


def ignore_patterns(text: str) -> list[tuple[bool, str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = os.path.normpath(pat.strip()).lstrip("/")
        out.append((negate, pat))
    return out


def _matches(path: str, pattern: str) -> bool:
    # Docker (moby/patternmatcher): a pattern matching a directory excludes all below it, and
    # "**" matches any number of directories (fnmatch's "*" already crosses "/").
    pattern = pattern.replace("**/", "*").replace("/**", "/*").replace("**", "*")
    parts = path.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def is_ignored(path: str, patterns: list[tuple[bool, str]]) -> bool:
    ignored = False
    for negate, pat in patterns:
        if _matches(path, pat):
            ignored = not negate
    return ignored


def _prunable(rel_dir: str, patterns: list[tuple[bool, str]]) -> bool:
    if not is_ignored(rel_dir, patterns):
        return False
    return not any(negate and pat.startswith(rel_dir + "/") for negate, pat in patterns)


def build_context(repo: Path = REPO) -> list[str]:
    """Relative paths of the files `docker build .` would send, per .dockerignore."""
    patterns = ignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    files = []
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = os.path.relpath(dirpath, repo)
        # Like Docker, skip an ignored directory unless a "!" pattern reaches inside it.
        dirnames[:] = [
            d for d in dirnames if not _prunable(d if rel_dir == "." else f"{rel_dir}/{d}", patterns)
        ]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not is_ignored(rel, patterns):
                files.append(rel)
    return sorted(files)


# --- replay -------------------------------------------------------------------------------------


class Replay:
    """Maps the image's absolute paths into ``root`` and runs the stages' steps there."""

    # Image directories the replay relocates (everything else, e.g. /usr/local, is the host's).
    RELOCATED = ("/opt", "/src", "/app", "/etc/vluna-bff", "/root", "/tmp", "/nonexistent")

    def __init__(self, root: Path, context_files: list[str], uv: str) -> None:
        self.root = root
        self.context = root / "_context"
        self.uv = uv
        for rel in context_files:
            dest = self.context / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest)

    def path(self, image_path: str) -> Path:
        assert image_path.startswith("/"), image_path
        return self.root / image_path.lstrip("/")

    def remap(self, value: str) -> str:
        def repl(m: re.Match[str]) -> str:
            return str(self.path(m.group(0)))

        alternatives = "|".join(re.escape(p) for p in self.RELOCATED)
        return re.sub(rf"(?<![\w./-])(?:{alternatives})(?=/|$|:|\s)[^\s:]*", repl, value)

    def stage_env(self, stage: Stage, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        for key, val in stage.env().items():
            env[key] = self.remap(_subst(val, env))
        return env

    def run_builder(self, stage: Stage, timeout: float) -> dict[str, str]:
        """Replays WORKDIR, COPY and RUN of the builder stage; returns its environment."""
        host_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHON", "VLUNA_BFF", "CONDA"))
        }
        uv_dir = str(Path(self.uv).parent)
        host_env["PATH"] = uv_dir + os.pathsep + host_env.get("PATH", "")
        host_env["HOME"] = str(self.path("/root"))
        # The image's only interpreter is its /usr/local/bin/python3; here, the one running the tests.
        host_env["UV_PYTHON"] = getattr(sys, "_base_executable", sys.executable) or sys.executable
        env = self.stage_env(stage, host_env)
        workdir = self.path("/")
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                workdir = self.path(ins.value)
                workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                flags, rest = ins.flags_and_rest()
                if "from" in flags:
                    continue  # the uv binary: the host's uv stands in for it
                *sources, dest = shlex.split(rest)
                target = workdir / dest if not dest.startswith("/") else self.path(dest)
                for src in sources:
                    s = self.context / src.rstrip("/")
                    assert s.exists(), f"line {ins.line}: COPY {src}: not in the build context"
                    if s.is_dir():
                        shutil.copytree(
                            s, target if dest.endswith("/") else target / s.name, dirs_exist_ok=True
                        )
                    else:
                        target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else None
                        shutil.copy2(s, target / s.name if dest.endswith("/") else target)
            elif ins.keyword == "RUN":
                self._run(ins, env, workdir, timeout)
        return env

    def _run(self, ins: Instruction, env: dict[str, str], workdir: Path, timeout: float) -> None:
        flags, command = ins.flags_and_rest()
        run_env = dict(env)
        bound: list[Path] = []
        for mount in flags.get("mount", []):
            opts = dict(part.partition("=")[::2] for part in mount.split(","))
            target = opts["target"]
            dest = self.path(target) if target.startswith("/") else workdir / target
            if opts.get("type") == "cache":
                dest.mkdir(parents=True, exist_ok=True)
                if target.rstrip("/").endswith("/.cache/uv"):
                    run_env["UV_CACHE_DIR"] = str(dest)
            elif opts.get("type") == "bind":
                src = self.context / opts["source"]
                assert src.exists(), f"line {ins.line}: bind mount source {opts['source']} missing"
                if not dest.exists():
                    # Docker creates a missing mount point's directories; they leave no trace.
                    made = [d for d in reversed(dest.parents) if not d.exists()]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest)
                    bound += [dest, *reversed(made)]
            else:
                raise AssertionError(f"line {ins.line}: unsupported mount {mount}")
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            for p in bound:  # bind mounts do not persist into the layer
                if p.is_dir():
                    p.rmdir()  # a mount point's directory, empty unless the RUN wrote into it
                else:
                    p.unlink()
        assert proc.returncode == 0, (
            f"Dockerfile line {ins.line}: RUN {command!r} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def find_uv() -> str | None:
    for candidate in (os.environ.get("UV"), shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return candidate
    try:  # `pip install uv` puts the binary next to the module
        from uv import find_uv_bin  # type: ignore[import-not-found]

        return str(find_uv_bin())
    except Exception:
        return None
