"""The OpenAPI document works with standard tools: a typed TypeScript client is generated
from it, compiled and run against a real server, and Redocly's linter passes it.

The docs' TypeScript program and its tsconfig.json ("A typed TypeScript client" in
docs/guides/clients-and-front-ends.md) are what is compiled here, so the page cannot
drift. The npm packages are the front-end checks' (pinned in tests/frontend/package.json,
installed by scripts/test.sh before the tests run); the test is skipped, with the
reason, when node/npm or those packages are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.doc_pages import blocks
from tests.live import live_app, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
#: The front-end checks' npm packages (scripts/test.sh installs them).
NODE_MODULES = Path(__file__).parent / "frontend" / "node_modules"
#: As the docs generate the types (a field with a default may be left out of a request).
TYPE_OPTIONS = ["--default-non-nullable", "false"]
#: Quiet, offline-friendly Node tools (no update checks, no telemetry).
NODE_ENV = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true", "NO_UPDATE_NOTIFIER": "1"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm are not installed"
    ),
]


def guide_program() -> str:
    programs = [b for b in blocks("typescript") if "createClient" in b]
    assert len(programs) == 1, "the docs must hold exactly one typed-client program"
    return programs[0]


def guide_tsconfig() -> str:
    configs = [b for b in blocks("json") if '"compilerOptions"' in b]
    assert len(configs) == 1, "the docs must hold exactly one tsconfig.json"
    tsconfig = configs[0]
    # tsc needs a target for the program's top-level await (ES2022 or later).
    assert "target" in json.loads(tsconfig)["compilerOptions"], tsconfig
    return tsconfig


def run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **NODE_ENV}
    )


@pytest.fixture(scope="module")
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory (kept between runs) with the guide's program and tsconfig.json, and the
    pinned npm packages."""
    if not (NODE_MODULES / ".bin" / "openapi-typescript").is_file():
        pytest.skip(f"the front-end checks' npm packages are not installed ({NODE_MODULES}): bash scripts/test.sh")
    cache = getattr(request.config, "cache", None)
    workdir = cache.mkdir("typed-client") if cache is not None else tmp_path_factory.mktemp("typed-client")
    modules = workdir / "node_modules"
    if modules.resolve() != NODE_MODULES.resolve():
        if modules.is_symlink() or modules.is_file():
            modules.unlink()
        elif modules.is_dir():
            shutil.rmtree(modules)  # an install of the test's own, from before
        modules.symlink_to(NODE_MODULES.resolve(), target_is_directory=True)
    (workdir / "package.json").write_text('{"private": true, "type": "module"}\n')  # dist/ is ES modules
    (workdir / "tsconfig.json").write_text(guide_tsconfig())
    (workdir / "client.ts").write_text(guide_program())
    yield workdir


def test_a_generated_typescript_client_compiles_and_runs(project: Path) -> None:
    """openapi-typescript + openapi-fetch: the guide's program compiles (strict) and completes a task;
    redocly lint finds no error and no warning (every operation declares its error answers)
    but the missing licence."""
    bin_dir = project / "node_modules" / ".bin"
    with serve_in_thread(live_app()) as url:
        document = httpx.get(f"{url}/schema/openapi.json").content
        # Generating, linting and compiling cost seconds of Node start-up each: they are redone
        # only when their inputs (the document, the program, the pinned tools) changed since the
        # last run that passed. The document is hashed in a canonical form: the order of its
        # paths varies between processes.
        inputs = json.dumps(json.loads(document), sort_keys=True).encode()
        for path in (NODE_MODULES.parent / "package.json", project / "tsconfig.json", project / "client.ts"):
            inputs += path.read_bytes()
        checked = project / f".checked-{hashlib.sha256(inputs).hexdigest()}"
        if not checked.is_file() or not (project / "dist" / "client.js").is_file():
            (project / "openapi.json").write_bytes(document)
            generate = start(project, [bin_dir / "openapi-typescript", "openapi.json", "-o", "api.d.ts", *TYPE_OPTIONS])
            lint = start(project, [bin_dir / "redocly", "lint", "openapi.json", "--format=json"])
            generated, linted = generate.communicate(timeout=120), lint.communicate(timeout=120)
            assert generate.returncode == 0, generated[1]
            assert lint.returncode == 0, f"redocly lint found errors:\n{linted[0]}\n{linted[1]}"
            problems = {(p["ruleId"], p["message"]) for p in json.loads(linted[0])["problems"]}
            # The one warning left: the project names no licence for the document to state.
            assert {rule for rule, _ in problems} <= {"info-license"}, sorted(problems)
            shutil.rmtree(project / "dist", ignore_errors=True)
            compiled = run([str(bin_dir / "tsc"), "-p", "."], project)
            assert compiled.returncode == 0, f"the typed client does not compile:\n{compiled.stdout}{compiled.stderr}"
            for stale in project.glob(".checked-*"):
                stale.unlink()
            checked.touch()

        ran = run(["node", "dist/client.js", url], project, timeout=60)
        assert ran.returncode == 0, ran.stderr
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "completed"
    assert outcome["refused"] == "invalid_params"
    assert re.fullmatch(r"[0-9a-f-]{36}", outcome["taskId"])


def start(cwd: Path, command: list[Path | str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env={**os.environ, **NODE_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
