"""How pytest-xdist shares the tests out between its workers (`tests/conftest.py` hooks it in).

Every test is a unit of its own, as with ``--dist load``, except the modules listed in
`WHOLE_MODULES`: their tests share something expensive that a process starts once (a
browser, real server processes), so each of those groups runs whole on one worker, and
the biggest groups are handed out first (which also puts the tests that mostly wait on
other processes at the start, beside the others' work, not alone at the end). Two
groups may go to two workers, which then run side by side.

(pytest-xdist's own ``--dist loadgroup`` reads ``xdist_group`` marks by rewriting node
ids, which pytest 9.2 no longer allows: the marks are silently ignored, see
pytest-dev/pytest-xdist#1386. This scheduler needs no marks.)
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # no py.typed

#: Module path -> group. The modules of one group run in a row on one worker.
WHOLE_MODULES = {
    # One Chromium per worker (a package fixture); the dashboard module alone is the longest group.
    "tests/browser/test_dashboard.py": "browser-dashboard",
    "tests/browser/test_clients.py": "browser-clients",
    "tests/browser/test_cross_origin.py": "browser-clients",
    "tests/browser/test_admin_page.py": "browser-clients",
    # The guide's two server processes, started once for its curl and Python examples.
    "tests/test_demo_guide.py": "demo-guide",
    # redis-server, two API servers and a worker, started once.
    "tests/test_redis_processes.py": "redis-cluster",
    # A PostgreSQL cluster, two API servers and a worker, started once.
    "tests/test_postgres_processes.py": "postgres-cluster",
    # One real uvicorn process.
    "tests/test_uvicorn_boundaries.py": "uvicorn-boundaries",
    # A FastAPI app around the task system on a uvicorn server, started once for the module.
    "tests/test_asgi_hosts.py": "asgi-hosts",
    # Real server processes that mostly wait for signals and grace periods: as a group they
    # go out early, so that the waits overlap other workers' work instead of ending the run.
    "tests/test_shutdown.py": "shutdown",
    # Workers and servers killed at each hand-off, on one redis-server: mostly waiting for leases.
    "tests/faults/test_kills.py": "fault-kills",
}


#: Tests of a whole module that form a group of their own, so that two workers share the
#: module (each with its own browser): the dashboard's alone would be the longest group.
SPLIT_TESTS = {
    "tests/browser/test_dashboard.py::test_screenshot": "browser-dashboard-2",
    "tests/browser/test_dashboard.py::test_the_api_reference_renders_offline_from_the_dashboard_link": (
        "browser-dashboard-2"
    ),
    "tests/browser/test_dashboard.py::test_a_second_window_holds_its_own_session": "browser-dashboard-2",
    "tests/browser/test_dashboard.py::test_every_executor_gets_a_form_from_its_schema": "browser-dashboard-2",
    "tests/browser/test_dashboard.py::test_stats_and_cleanup_panels": "browser-dashboard-2",
    "tests/browser/test_dashboard.py::test_the_indicator_says_live_only_while_requests_work": "browser-dashboard-2",
}


class GroupedScheduling(LoadScopeScheduling):  # type: ignore[misc]  # untyped base
    """``--dist load`` with the groups of `WHOLE_MODULES` kept whole (and sent out first:
    xdist's load-scope reordering hands out the units with the most tests first)."""

    def _split_scope(self, nodeid: str) -> str:
        split = SPLIT_TESTS.get(nodeid.split("[", 1)[0])
        return split or WHOLE_MODULES.get(nodeid.split("::", 1)[0], nodeid)
