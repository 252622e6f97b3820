"""The references under docs/ cannot drift from the code: every setting the code reads is
in docs/reference/settings.md with its default (and nothing else is), every route and
every error code is in docs/reference/http.md, and the demo script stays short enough
to present in ten minutes."""

from __future__ import annotations

import ast
import itertools
import re
from typing import Any

import msgspec
from litestar.routes import HTTPRoute, WebSocketRoute

from async_tasks.settings import Settings
from async_tasks.web.errors import STATUS
from tests.doc_pages import GUIDE, PAGES, README, ROOT
from tests.helpers import BUILTIN_EXECUTORS, build_app

SETTINGS_PAGE = ROOT / "docs" / "reference" / "settings.md"
HTTP_PAGE = ROOT / "docs" / "reference" / "http.md"
#: A table row that documents a setting: its first cell is the variable, its second the default.
SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", re.M)
#: How an error code is written in the code: snake_case.
CODE = re.compile(r"^[a-z]+(_[a-z]+)*$")
#: Where the code answers: the package, except the vendored Swagger UI.
SOURCES = [p for p in (ROOT / "async_tasks").rglob("*.py") if "reference" not in p.relative_to(ROOT).parts]
ADMIN_KEY = "ops:docs-admin-key-0123456789"


def settings_in_code() -> dict[str, Any]:
    """Every environment variable the server reads, with its default: the fields of
    `Settings` (walking into fields that are structs of their own, read from the same
    flat environment) and of the built-in executors' `Config`s."""

    def fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field in msgspec.structs.fields(struct):
            if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
                found.update(fields(field.type))
            else:
                default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
                found[field.encode_name] = default
        return found

    found = fields(Settings)
    for executor in BUILTIN_EXECUTORS:
        found.update(fields(executor.Config))
    return found


def as_documented(default: Any) -> str:
    """A default as the settings page writes it."""
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_every_setting_is_documented_with_its_default() -> None:
    """A setting added, renamed, removed or given another default fails here until
    docs/reference/settings.md says so."""
    documented = {name: cell.strip().strip("`") for name, cell in SETTING_ROW.findall(SETTINGS_PAGE.read_text())}
    in_code = {name: as_documented(default) for name, default in settings_in_code().items()}
    assert sorted(set(in_code) - set(documented)) == [], "settings missing from docs/reference/settings.md"
    assert sorted(set(documented) - set(in_code)) == [], "documented settings the code does not read"
    assert {name: (documented[name], in_code[name]) for name in in_code if documented[name] != in_code[name]} == {}


def routes_in_code() -> set[str]:
    """`METHOD /path` of every route of the app, admin included (`WS` for WebSockets)."""
    app = build_app([], admin_api_keys=ADMIN_KEY)
    found = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if isinstance(route, WebSocketRoute):
            found.add(f"WS {path}")
        elif isinstance(route, HTTPRoute):
            found.update(f"{method} {path}" for method in route.methods if method not in ("HEAD", "OPTIONS"))
    return found


def test_every_route_is_documented() -> None:
    """Every route of the app, and so every operation of its OpenAPI document, has its row
    in docs/reference/http.md."""
    page = HTTP_PAGE.read_text()
    routes = routes_in_code()
    operations = {
        f"{method.upper()} {path}"
        for path, item in build_app([], admin_api_keys=ADMIN_KEY).openapi_schema.to_schema()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert operations <= routes
    assert sorted(route for route in routes if f"`{route}`" not in page) == []


def error_codes_in_code() -> set[str]:
    """Every `error.code` the server can answer with, read from the source: the `code` of
    each error class, the code beside a status in a refusal (``(403, "forbidden_origin",
    ...)``, ``error_response(400, "malformed_json", ...)``) and the status-to-code tables."""
    codes: set[str] = set()
    for source in SOURCES:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                targets = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in node.targets]
                if "code" in targets and isinstance(node.value.value, str):
                    codes.add(node.value.value)
            items = node.args if isinstance(node, ast.Call) else node.elts if isinstance(node, ast.Tuple) else []
            for status, code in itertools.pairwise(items):
                if _is_error_status(status) and isinstance(code, ast.Constant) and isinstance(code.value, str):
                    codes.add(code.value)
            if (
                isinstance(node, ast.Dict)
                and node.keys
                and all(k is not None and _is_error_status(k) for k in node.keys)
            ):
                codes.update(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return {code for code in codes if CODE.match(code)}


def _is_error_status(node: ast.expr) -> bool:
    """A 4xx or 5xx status written as a number or as a `HTTP_503_...` constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return 400 <= node.value < 600
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    match = re.match(r"HTTP_(\d{3})_", name)
    return match is not None and 400 <= int(match[1]) < 600


def test_every_error_code_is_documented() -> None:
    """Every error code of the code has its row, with its status, in the error codes table."""
    table = HTTP_PAGE.read_text().split("## Error codes", 1)[1]
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", table, re.M))
    codes = error_codes_in_code()
    assert {"invalid_params", "forbidden_origin", "internal_error", "stream_evicted"} <= codes  # the reader works
    assert sorted(codes - set(documented)) == []
    assert sorted(set(documented) - codes) == [], "documented codes the code never answers"


def test_the_error_table_gives_each_engine_error_its_status() -> None:
    """Each error of the engine is documented with the status the web door answers it with."""
    table = HTTP_PAGE.read_text().split("## Error codes", 1)[1]
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", table, re.M))
    wrong = {cls.code: status for cls, status in STATUS.items() if str(status) not in documented[cls.code]}
    assert wrong == {}


def test_the_demo_script_stays_short() -> None:
    """DEMO_GUIDE.md is a ten-minute script: everything else belongs under docs/."""
    assert len(GUIDE.read_text().splitlines()) <= 520


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_pages_lead_somewhere() -> None:
    """Every relative link of README.md, the demo script and docs/ names a file that
    exists and, with a `#`, one of its headings: moving a section breaks no link."""
    broken = []
    for page in (README, *PAGES):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not ours to check here
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target}")
    assert broken == []
