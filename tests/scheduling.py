"""How pytest-xdist shares the tests out between its workers (`tests/conftest.py` hooks it in).

Every test is a unit of its own, as with ``--dist load``, except the modules listed in
`WHOLE_MODULES`: their tests share something expensive that a process starts once (a
browser, real server processes), so each of those groups runs whole on one worker, and
the groups are handed out first, the longest first (`GROUP_ORDER`: which also puts the
tests that mostly wait on other processes at the start, beside the others' work, not
alone at the end). Two
groups may go to two workers, which then run side by side. After the groups come the
tests of `EARLY_MODULES` (single tests of seconds, mostly waiting on other processes),
then the rest in collection order: a run ends on tests of milliseconds, not on a
Node compiler or a server process started last.

(pytest-xdist's own ``--dist loadgroup`` reads ``xdist_group`` marks by rewriting node
ids, which pytest 9.2 no longer allows: the marks are silently ignored, see
pytest-dev/pytest-xdist#1386. This scheduler needs no marks.)
"""

from __future__ import annotations

from collections import OrderedDict

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


#: Modules (or folders, ending in "/") whose tests each take seconds, mostly waiting on
#: other processes (Node, servers, a PostgreSQL cluster of their own) or computing alone:
#: handed out right after the groups, each test still a unit of its own.
EARLY_MODULES = (
    "tests/test_typed_client.py",  # openapi-typescript, Redocly and tsc on a fresh machine
    "tests/test_loading.py",  # an API server and a worker, started as the console script
    "tests/battery/test_fair_shares.py",  # floods of seconds each
    "tests/faults/",  # servers paused, killed and restarted
    "tests/test_postgres_app.py",  # a PostgreSQL cluster of its own
    "tests/test_packaging.py",  # mypy in a subprocess
    "tests/battery/test_openapi_fuzz.py",
    "tests/test_layout.py",  # parses every module of the house
    "tests/test_cli.py",  # the installed command in a subprocess
    "tests/test_system.py",  # a fresh interpreter importing the engine
    "tests/test_settings.py",  # serve exiting on a bad variable
)


#: The groups, the longest first (seconds of a run on two busy cores): they go out in this
#: order, so that the longest start at once, beside each other.
GROUP_ORDER = [
    "fault-kills",  # 26
    "browser-dashboard",  # 26
    "demo-guide",  # 25
    "postgres-cluster",  # 16
    "browser-dashboard-2",  # 16
    "browser-clients",  # 14
    "shutdown",  # 11
    "redis-cluster",  # 9
    "uvicorn-boundaries",  # 5
    "asgi-hosts",  # 1
]
_GROUPS = {*WHOLE_MODULES.values(), *SPLIT_TESTS.values()}


def _rank(scope: str) -> tuple[int, int]:
    """Groups first (in `GROUP_ORDER`; one missing there after those listed), then a test
    of `EARLY_MODULES`, then the rest (a stable sort: in collection order)."""
    if scope in _GROUPS:
        return 0, GROUP_ORDER.index(scope) if scope in GROUP_ORDER else len(GROUP_ORDER)
    return (1 if scope.startswith(EARLY_MODULES) else 2), 0


class GroupedScheduling(LoadScopeScheduling):  # type: ignore[misc]  # untyped base
    """``--dist load`` with the groups of `WHOLE_MODULES` kept whole and sent out first."""

    collection: list[str] | None
    workqueue: OrderedDict[str, dict[str, bool]]

    def schedule(self) -> None:
        """As `LoadScopeScheduling.schedule`, but the queue in `_rank` order: the groups
        longest first (as `WHOLE_MODULES` lists them), then `EARLY_MODULES`, then the rest."""
        if self.collection is not None:  # a worker came later: give it work
            for node in self.nodes:
                self._reschedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = collection = list(next(iter(self.registered_collections.values())))
        units: dict[str, dict[str, bool]] = {}
        for nodeid in collection:
            units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
        self.workqueue = OrderedDict(sorted(units.items(), key=lambda item: _rank(item[0])))
        for node in self.nodes:
            if self.workqueue:
                self._assign_work_unit(node)
            else:
                node.shutdown()  # more workers than units
        for node in self.nodes:
            self._reschedule(node)

    def _split_scope(self, nodeid: str) -> str:
        split = SPLIT_TESTS.get(nodeid.split("[", 1)[0])
        return split or WHOLE_MODULES.get(nodeid.split("::", 1)[0], nodeid)
