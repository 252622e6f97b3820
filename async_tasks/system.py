"""`TaskSystem`: the engine on its own, usable from a web app, a worker, a script.

    async with TaskSystem(executors=[GreetExecutor]) as system:
        task = await system.create_task("my-session", executor="greet", params={"who": "Ada"})
        ...

Entering it starts the execution backend and the cleaner; leaving it shuts them
down gracefully (tasks still running are cancelled with reason ``shutdown`` and get
most of SHUTDOWN_GRACE_MS to unwind). Every service method takes the caller's
session key: a task of another session is never found. Input is validated against
the executor here, quotas and the Idempotency-Key are checked atomically by the
store, and execution is the backend's job; nothing here knows about HTTP.

A create may name the client asking (`async_tasks.clients`: the web door passes a
keyed hash of the address); its budgets are the store's to apply with the insert.
Stores keep a task's params, metadata and result as encoded JSON (`StoredTask`): the
methods here return tasks with those decoded (params as the executor's `Params`),
unless asked with ``decode=False`` (the web door: it only re-sends them as JSON).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import msgspec

from async_tasks.backends import Backend, Worker, backend_for
from async_tasks.buckets import TokenBuckets
from async_tasks.cleanup import Cleaner, CleanupResult
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.context import request_id_var
from async_tasks.errors import (
    InvalidParams,
    RateLimited,
    ShuttingDown,
    TaskNotFound,
    TaskTooLarge,
    UnknownExecutor,
)
from async_tasks.execution.base import ExecutionBackend
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.faults import crash_point
from async_tasks.outlook import Outlook, Outlooks
from async_tasks.settings import BackendSettings, EngineSettings
from async_tasks.store.base import (
    CreateLimits,
    Idempotency,
    SessionCounts,
    StorePolicy,
    TaskFilter,
    TaskPage,
    TaskStore,
)
from async_tasks.task import EMPTY_OBJECT, StoredTask, Task, TaskOptions, TaskStatus, compact
from async_tasks.validation import explain

logger = logging.getLogger("async_tasks")

#: The share of SHUTDOWN_GRACE_MS that tasks get to unwind; the rest is for the server.
SHUTDOWN_TASK_SHARE = 0.8
#: A create's options when it gives none: start at once, the executor's defaults.
DEFAULT_OPTIONS = TaskOptions()


class TaskSystem:
    """The task engine: executors, a task store, an execution backend and the cleaner."""

    def __init__(
        self,
        executors: Iterable[type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any]] = (),
        *,
        settings: BackendSettings | None = None,
        environ: Mapping[str, str] | None = None,
        load_entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        backend: Backend | None = None,
    ) -> None:
        """Build the engine. Bad settings or executors raise here, at start-up.

        Args:
            executors: executor classes (or instances) to register besides the ones
                installed packages declare under the ``async_tasks.executors``
                entry-point group.
            settings: the engine's and backend's settings (a `Settings` has them too);
                defaults to `BackendSettings.from_env(environ)`.
            environ: the environment to read settings and executor configs from.
            load_entry_points: set False to register only `executors`.
            clock: the time source (tests pass a `FakeClock`).
            backend: where tasks live and run; by default the one TASK_BACKEND names.
        """
        self.settings = settings or BackendSettings.from_env(environ)
        self.clock = clock
        self.executors = ExecutorRegistry.build(executors, load_entry_points=load_entry_points, environ=environ)
        for executor in self.executors:
            executor.clock = clock
        #: Where tasks live and run (TASK_BACKEND): store, execution, worker, events.
        self.backend: Backend = backend or backend_for(self.settings, self.executors, clock)
        self.store: TaskStore = self.backend.store
        self.execution: ExecutionBackend = self.backend.execution
        #: Runs attempts delivered by a shared backend in this process (a worker process,
        #: or ``serve --with-worker``); None otherwise.
        self.worker: Worker | None = (
            self.backend.worker(self.settings.worker_concurrency) if self.settings.embedded_worker else None
        )
        self.cleaner = Cleaner(self.store, self.settings, clock)
        self.cleaner.on_expired.append(self._drop_expired)
        # Retention as tasks finish and the history cap are the store's own rules.
        self.store.policy = StorePolicy(
            retention=self.cleaner.retention,
            max_history=self.settings.max_task_history,
            idempotency_window_ms=self.settings.idempotency_key_ttl_ms or None,
            idempotency_keys=idempotency_keys_kept(self.settings),
            logs=self.settings.log_limits,
        )
        self.limits = CreateLimits(
            max_active_per_session=self.settings.max_active_tasks_per_session,
            max_tasks=self.settings.max_tasks,
            max_sessions=self.settings.max_sessions,
            max_tasks_per_client=self.settings.max_tasks_per_client,
            max_sessions_per_client=self.settings.max_sessions_per_client,
        )
        self._client_limits: dict[str, CreateLimits] = {}
        #: Reads per session (TASK_READ_RATE), counted in this process.
        self.read_buckets = TokenBuckets(clock)
        #: Called when shutdown begins, before tasks are cancelled (push streams close here).
        self.on_shutdown: list[Callable[[], None]] = []
        #: Tasks the last shutdown abandoned (they ignored cancellation or block in a thread).
        self.abandoned: list[Task] = []
        self._stack: AsyncExitStack | None = None
        self._shutdown_done: anyio.Event | None = None
        self._shutdown_requested: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Where waiting and running tasks stand (queue positions, estimates).
        self.outlooks = Outlooks(self.store, self.execution, clock)

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> TaskSystem:
        stack = AsyncExitStack()
        await stack.enter_async_context(self.lifespan())
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[TaskSystem]:
        """Run the execution backend and the cleaner for the duration of the block."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.execution.run)
            if self.worker is not None:
                await tg.start(self.worker.run)
            await tg.start(self.cleaner.run)
            self._shutdown_done = None
            self._shutdown_requested = requested = anyio.Event()
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio: shutdown starts only when the block ends
                self._loop = None
            tg.start_soon(self._shutdown_when_requested, requested)
            logger.info(
                "Task system initialized successfully (%d executors: %s)",
                len(self.executors),
                ", ".join(self.executors.names()),
            )
            try:
                yield self
            finally:
                self._loop = None
                await self.shutdown()
                tg.cancel_scope.cancel()

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: new and retried tasks are refused."""
        return self.execution.accepting

    def request_shutdown(self) -> None:
        """Begin shutting down now, without waiting for the lifespan to end.

        Safe to call from a signal handler or another thread: new tasks are refused at
        once, and `shutdown` runs in the event loop.
        """
        self.execution.stop_accepting()
        loop, requested = self._loop, self._shutdown_requested
        if loop is not None and requested is not None:
            try:
                loop.call_soon_threadsafe(requested.set)
            except RuntimeError:  # the loop has closed
                pass

    async def _shutdown_when_requested(self, requested: anyio.Event) -> None:
        await requested.wait()
        await self.shutdown()

    async def shutdown(self) -> list[Task]:
        """Refuse new tasks, run the `on_shutdown` hooks, end every queued and running
        task with reason ``shutdown`` and wait for them up to most of
        SHUTDOWN_GRACE_MS. Returns the abandoned tasks. A second call waits for the
        first one."""
        if self._shutdown_done is not None:
            await self._shutdown_done.wait()
            return self.abandoned
        self._shutdown_done = done = anyio.Event()
        try:
            self.execution.stop_accepting()
            load = await self.execution.load()
            running = len(self.worker.running_tasks()) if self.worker is not None else load.running
            if self.backend.keeps_queued_tasks:
                logger.info(
                    "Shutting down: %d tasks running in this process; queued tasks stay in %s",
                    running, self.backend.name,
                )  # fmt: skip
            else:
                logger.info("Shutting down: cancelling %d running and %d queued tasks", load.running, load.queued)
            for hook in self.on_shutdown:
                try:
                    hook()
                except Exception:
                    logger.exception("A shutdown hook failed")
            grace = self.settings.shutdown_grace_ms / 1000 * SHUTDOWN_TASK_SHARE
            self.abandoned = await self.execution.shutdown(grace)
            if self.worker is not None:
                self.abandoned += await self.worker.shutdown(grace)
        finally:
            done.set()
        return self.abandoned

    # -- create ------------------------------------------------------------------

    def executor(self, name: str) -> TaskExecutor[Any, Any]:
        executor = self.executors.get(name)
        if executor is None:
            raise UnknownExecutor(name, self.executors.names())
        return executor

    async def create_task(
        self,
        session_key: str,
        *,
        executor: str,
        params: Any = None,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        start: bool = True,
        priority: int = 0,
        timeout_ms: int | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        start_at: int | None = None,
        client: str | None = None,
    ) -> Task:
        """Create a task in the session and (by default) start it; returns at once.

        `params` is a mapping validated against the executor's `Params` (or a `Params`
        instance). Either the task runs (or waits in the queue) or it was never
        created: a failure or a shutdown between the two leaves nothing behind.
        `start_at` (epoch ms) starts it at that time instead (it implies `start`; a time
        already past starts it now; at most MAX_START_DELAY_MS ahead): pending meanwhile,
        `Task.scheduled_at` says when, and it counts in the quotas as any pending task.
        `client` is who asks (its budgets apply; None: the session is its own client).
        The other arguments are the task's `TaskOptions`.
        """
        options = TaskOptions(
            name=name,
            description=description,
            metadata=metadata,
            tags=tags,
            start=start,
            priority=priority,
            timeout_ms=timeout_ms,
            max_retries=max_retries,
            start_at=start_at,
        )
        task, _ = await self.create_or_replay(
            session_key,
            executor=executor,
            params=params,
            options=options,
            idempotency_key=idempotency_key,
            request_id=request_id,
            client=client,
        )
        return self.decoded(task)

    async def create_or_replay(
        self,
        session_key: str,
        *,
        executor: str,
        params: Any = None,
        options: TaskOptions = DEFAULT_OPTIONS,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        client: str | None = None,
    ) -> tuple[Task, bool]:
        """`create_task` with its options as one `TaskOptions`, also telling whether an
        Idempotency-Key replayed an earlier task; the task as stored (its data encoded)."""
        impl = self.executor(executor)
        cls = type(impl)
        if not self.accepting:
            raise ShuttingDown()
        name, description, metadata, tags = options.name, options.description, options.metadata, options.tags
        priority, start, start_at = options.priority, options.start, options.start_at
        if start_at is not None:
            self._check_start_at(start_at)
            start = True
        params = self._convert_params(cls, params)
        data = self._encode_data(params, metadata, tags)
        timeout_ms = options.timeout_ms if options.timeout_ms is not None else cls.timeout_ms
        if timeout_ms is not None and not 1 <= timeout_ms <= self.settings.max_task_timeout_ms:
            raise InvalidParams(
                f"timeoutMs must be from 1 to {self.settings.max_task_timeout_ms} (the server's MAX_TASK_TIMEOUT_MS).",
                field="timeoutMs",
            )
        max_retries = options.max_retries if options.max_retries is not None else cls.max_retries
        if not 0 <= max_retries <= self.settings.max_task_retries:
            raise InvalidParams(
                f"maxRetries must be from 0 to {self.settings.max_task_retries} (the server's MAX_TASK_RETRIES).",
                field="maxRetries",
            )
        idempotency = None
        if idempotency_key is not None:
            fingerprint = hashlib.sha256(
                msgspec.json.encode(
                    [executor, params, name, description, metadata, tags, priority, timeout_ms, max_retries, start]
                    + ([start_at] if start_at is not None else [])
                )
            ).digest()
            idempotency = Idempotency(idempotency_key, fingerprint)
            # A replay costs no rate token and no validation.
            earlier = await self.store.replay(session_key, idempotency)
            if earlier is not None:
                return earlier, True
        await self._take_create_token(session_key)
        await impl.validate(params)
        if not self.accepting:  # shutdown began while `validate` awaited
            raise ShuttingDown()
        task = StoredTask(
            id=str(uuid.uuid4()),
            session_key=session_key,
            executor=cls.name,
            name=name or cls.title or cls.name,
            description=description or "",
            params=data[0],
            metadata=data[1] if metadata else EMPTY_OBJECT,
            tags=list(tags or ()),
            priority=priority,
            timeout_ms=timeout_ms,
            max_retries=max_retries,
            request_id=request_id if request_id is not None else request_id_var.get(),
        )
        created = await self.execution.create(
            task, limits=self._limits_of(client), idempotency=idempotency, start=start, start_at=start_at
        )
        crash_point("create.after_store")
        return created

    @staticmethod
    def _convert_params(cls: type[TaskExecutor[Any, Any]], params: Any) -> Any:
        if params is None or isinstance(params, Mapping):
            try:
                return msgspec.convert(dict(params or {}), cls.Params)
            except msgspec.ValidationError as exc:
                raise invalid_params(exc, cls.Params) from None
        if not isinstance(params, cls.Params):
            raise InvalidParams(f"params must be a {cls.Params.__name__} or a mapping.", field="params")
        return params

    def _encode_data(
        self, params: Any, metadata: Mapping[str, Any] | None, tags: Sequence[str] | None
    ) -> tuple[msgspec.Raw, msgspec.Raw]:
        """Params and metadata as the store keeps them (encoded JSON), refused when params,
        metadata and tags encode to more than MAX_TASK_DATA_BYTES."""
        limit = self.settings.max_task_data_bytes
        try:
            encoded_params, encoded_metadata = _encode(params), _encode(metadata)
            size = len(encoded_params) + len(encoded_metadata) + len(_encode(tags))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidParams(f"metadata must be JSON: {exc}", field="metadata") from None
        if size > limit:
            raise TaskTooLarge(
                f"The task's params, metadata and tags take {size} bytes as JSON; the limit is {limit} "
                "(MAX_TASK_DATA_BYTES).",
                details={"limit": limit, "size": size, "setting": "MAX_TASK_DATA_BYTES"},
            )
        return msgspec.Raw(compact(encoded_params)), msgspec.Raw(compact(encoded_metadata))

    def _limits_of(self, client: str | None) -> CreateLimits:
        """The create limits with `client` as who asks (made once per client, kept a while)."""
        if client is None:
            return self.limits
        limits = self._client_limits.get(client)
        if limits is None:
            if len(self._client_limits) >= _CLIENT_LIMITS_KEPT:
                self._client_limits.clear()
            limits = self._client_limits[client] = msgspec.structs.replace(self.limits, client=client)
        return limits

    def decoded(self, task: Task) -> Task:
        """A stored task with its data decoded, its params as its executor's `Params` (plain
        JSON values when the executor is gone or no longer takes them)."""
        if not isinstance(task, StoredTask):
            return task
        executor = self.executors.get(task.executor)
        if executor is not None:
            try:
                return task.decoded(type(executor).Params)
            except msgspec.ValidationError:
                pass
        return task.decoded()

    def _check_start_at(self, start_at: int) -> None:
        """A `startAt` more than MAX_START_DELAY_MS ahead is refused (one in the past starts now)."""
        most = self.settings.max_start_delay_ms
        ahead = start_at - self.clock.now_ms()
        if ahead > most:
            raise InvalidParams(
                f"startAt is {_duration(ahead)} ahead; a task can start at most {_duration(most)} ahead "
                f"(MAX_START_DELAY_MS is {most}).",
                field="startAt",
            )

    async def _drop_expired(self, tasks: list[Task]) -> None:
        """Tasks the cleaner cancelled for never starting: end any queued wait for them."""
        await self.execution.discard(tasks)

    def _take_read_token(self, session_key: str) -> None:
        """Reads are rate limited per session like creates (TASK_READ_RATE), in this process:
        one client polling in a tight loop cannot take the store's time from everyone else."""
        rate = self.settings.task_read_rate
        if rate <= 0:
            return
        wait = self.read_buckets.take(session_key, rate, self.settings.task_read_burst)
        if wait > 0:
            raise RateLimited(
                f"Too many reads too quickly (limit {rate:g} per second). Retry in {wait:.2f} s, or follow the "
                "task's event stream instead of polling.",
                retry_after=wait,
                details={"ratePerSecond": rate, "burst": self.settings.task_read_burst, "setting": "TASK_READ_RATE"},
            )

    async def _take_create_token(self, session_key: str) -> None:
        rate = self.settings.task_create_rate
        if rate <= 0:
            return
        burst = self.settings.task_create_burst
        wait = await self.store.take_token(session_key, rate, burst)
        if wait > 0:
            raise RateLimited(
                f"Too many tasks created too quickly (limit {rate:g} per second). Retry in {wait:.2f} s.",
                retry_after=wait,
                details={"ratePerSecond": rate, "burst": burst},
            )

    # -- read --------------------------------------------------------------------

    async def get_task(self, session_key: str, task_id: str, *, decode: bool = True, reads: str | None = None) -> Task:
        """The task, if it belongs to the session (`TaskNotFound` otherwise); as stored with
        ``decode=False``. Reads draw from the session's read rate, or `reads`' (a share
        link's viewers have a bucket of their own)."""
        self._take_read_token(reads or session_key)
        task = await self.store.get(session_key, task_id)
        return self.decoded(task) if decode else task

    async def task_status(self, session_key: str, task_id: str) -> tuple[Task, Outlook | None]:
        """What ``/status`` answers: the task's status fields (its params, result, history and
        logs may be left out: `TaskStore.poll`) and, waiting or running, its outlook. On
        Redis one round trip for all of it. Draws from the session's read rate as `get_task`."""
        self._take_read_token(session_key)
        poll = await self.store.poll(session_key, task_id)
        if poll.task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING):
            return poll.task, None
        return poll.task, await self.outlooks.of_poll(session_key, poll)

    async def list_tasks(
        self,
        session_key: str,
        *,
        status: TaskStatus | None = None,
        executor: str | None = None,
        tag: str | None = None,
        dead_letter: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        """A page of the session's tasks (summaries: their data may be left out, or encoded),
        newest first, how many match in all and where the next page starts
        (`TaskPage.next_cursor`)."""
        self._take_read_token(session_key)
        where = TaskFilter(status=status, executor=executor, tag=tag, dead_letter=dead_letter)
        return await self.store.query(session_key, where, limit=limit, offset=offset, cursor=cursor)

    async def stats(self, session_key: str) -> SessionCounts:
        """The session's tasks by status and the mean run time of the completed ones."""
        self._take_read_token(session_key)
        return await self.store.counts(session_key)

    async def queue_position(self, task: Task) -> int | None:
        return await self.execution.queue_position(task) if task.status is TaskStatus.PENDING else None

    async def outlook(self, session_key: str, tasks: Sequence[Task]) -> dict[str, Outlook]:
        """Where each waiting or running task of `tasks` (one session's) stands: its place in
        the session's line and when it should start and finish (`async_tasks.outlook`)."""
        return await self.outlooks.of(session_key, tasks)

    # -- control -----------------------------------------------------------------

    async def start_task(
        self, session_key: str, task_id: str, *, start_at: int | None = None, decode: bool = True
    ) -> Task:
        """Start a pending task (it runs when the limits allow), or at `start_at` (epoch ms,
        as for `create_task`): a task waiting for its time moves to the new one (None:
        now, early)."""
        if not self.accepting:
            raise ShuttingDown()
        if start_at is not None:
            self._check_start_at(start_at)
        task = await self.execution.start(session_key, task_id, start_at=start_at)
        return self.decoded(task) if decode else task

    async def cancel_task(
        self, session_key: str, task_id: str, reason: str = "cancelled by request", *, decode: bool = True
    ) -> Task:
        """Cancel a pending or running task: it is `cancelled` at once and its progress
        frozen; the executor is stopped at its next await."""
        task = await self.execution.cancel(session_key, task_id, reason)
        return self.decoded(task) if decode else task

    async def retry_task(self, session_key: str, task_id: str, *, decode: bool = True) -> Task:
        """Run a failed or cancelled task again (a fresh attempt; the automatic retry
        budget starts again). Counts against the create rate."""
        if not self.accepting:
            raise ShuttingDown()
        await self.store.get(session_key, task_id)  # 404 before a rate token is spent
        await self._take_create_token(session_key)
        task = await self.execution.retry(session_key, task_id)
        return self.decoded(task) if decode else task

    async def delete_task(self, session_key: str, task_id: str) -> None:
        """Forget a task that is not running (a pending one is cancelled first)."""
        task = await self.store.get(session_key, task_id)
        if task.status is TaskStatus.PENDING:
            await self.cancel_task(session_key, task_id, reason="deleted", decode=False)
        try:
            await self.store.remove(session_key, task_id)
        except TaskNotFound:
            # Removed meanwhile (to make room for another client, by retention or expiry):
            # it is gone, as asked.
            pass

    # -- cleanup -----------------------------------------------------------------

    async def run_cleanup(self, session_key: str | None = None) -> CleanupResult:
        """Apply retention now, in one session (or every session with None)."""
        return await self.cleaner.run_once(session_key)


_encode = msgspec.json.Encoder().encode
#: Clients whose create limits are kept made (a flood of addresses only costs making them again).
_CLIENT_LIMITS_KEPT = 4096


def _duration(ms: int) -> str:
    """Milliseconds for a person: ``7 days``, ``3.5 hours``, ``1 minute``, ``90 seconds``."""
    units = (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000))
    unit, size = next(((unit, size) for unit, size in units if ms >= size), ("second", 1000))
    amount = f"{ms / size:.3g}"
    return f"{amount} {unit}{'' if amount == '1' else 's'}"


def idempotency_keys_kept(settings: EngineSettings) -> int:
    """How many Idempotency-Keys a session keeps at most: enough for every task it can
    hold, and as many again of tasks already gone."""
    held = settings.max_active_tasks_per_session + settings.max_completed_tasks
    held += settings.max_failed_tasks + settings.max_cancelled_tasks
    return 2 * held


def invalid_params(exc: msgspec.ValidationError, params_type: type[Any] | None = None) -> InvalidParams:
    """A msgspec validation error of task params as the contract's `invalid_params`: a
    sentence naming the field as ``params.<field>`` (see `async_tasks.validation`)."""
    field, message = explain(exc, params_type, within="params")
    return InvalidParams(message, field=field)
