"""The task record, its status enum and the one table of legal transitions.

A `Task` holds data only. Status, progress and timestamps change in exactly one
place, the task store's `transition` / `report_progress` (see `async_tasks.store`),
which stamps times and appends to `history`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final, Generic

import msgspec
from typing_extensions import TypeVar

from async_tasks.task_log import LogLine

#: The type of a task's params: the executor's `Params` struct.
P = TypeVar("P", default=Any)


class TaskStatus(str, enum.Enum):
    # Hashed as the string it equals (``TaskStatus.PENDING == "pending"``), by str's own
    # hash: Enum's hashes the member's name in Python, a call per lookup in every index and
    # count keyed by status (and a hash that differs from the equal string's).
    __hash__ = str.__hash__

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses a task never leaves except through an explicit retry.
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
#: Statuses the cleaner never touches and the active-task quota counts.
ACTIVE = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
#: Terminal statuses a task can be retried from.
RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})

#: The state machine: for each status, the statuses it may move to.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),
}


def can_transition(source: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[source]


class HistoryEntry(msgspec.Struct, rename="camel", gc=False, omit_defaults=True):
    """One transition in a task's audit trail. An entry into ``failed`` keeps the
    attempt's error: a retry clears `Task.error`, the history does not forget it.

    When a task's history is capped (the store keeps its first and latest entries), one
    entry stands for the transitions left out: `omitted` counts them, `previous` is
    where the first of them started and `status`, `at` and `attempt` are those of the
    last, so the trail still reads as a chain.
    """

    at: int
    status: TaskStatus
    previous: TaskStatus | None = None
    attempt: int = 1
    reason: str | None = None
    error: str | None = None
    #: How many transitions this entry stands for (0: it is one transition).
    omitted: int = 0


class TaskOptions(msgspec.Struct, kw_only=True, frozen=True):
    """What a create says about a new task besides its executor and params: one record
    carried from the request (``POST /tasks``, the demo routes) through
    `TaskSystem.create_or_replay` to the stored `Task`.

    The HTTP bodies (`async_tasks.web.api.schemas.CreateTaskRequest`) declare the same
    fields with the contract's bounds; the engine checks the bounds that depend on its
    settings (MAX_TASK_TIMEOUT_MS, MAX_TASK_RETRIES, MAX_START_DELAY_MS, MAX_TASK_DATA_BYTES).
    """

    #: The task's title (default: the executor's `title`, else its name).
    name: str | None = None
    description: str | None = None
    #: Any JSON object, kept with the task (counts in MAX_TASK_DATA_BYTES).
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] | None = None
    #: Start at once (it runs when the limits allow); False leaves it pending.
    start: bool = True
    #: Higher starts first among the session's waiting tasks.
    priority: int = 0
    #: Fail an attempt after this long (default: the executor's `timeout_ms`).
    timeout_ms: int | None = None
    #: Automatic retries after a failure (default: the executor's `max_retries`).
    max_retries: int | None = None
    #: Start at this time (epoch ms; implies `start`; a time past starts it now).
    start_at: int | None = None


class Task(msgspec.Struct, Generic[P], rename="camel", kw_only=True, gc=False):
    """A unit of background work owned by one session.

    Times are epoch milliseconds. `params` is the executor's validated `Params`
    instance, so ``Task[GreetParams]`` types ``task.params.who``. `progress` only
    moves forward within an attempt and only through the executor's reporter; a retry
    resets it.

    Not tracked by the garbage collector (``gc=False``): nothing a task holds refers back
    to it (params, metadata and result are JSON values, history and log entries plain
    records), so it is never part of a reference cycle, and a store of 100 000 retained
    tasks costs each full collection 100 000 objects fewer to walk (the lists a task
    holds are still tracked, and collected with it).
    """

    id: str
    session_key: str
    executor: str
    name: str
    params: P
    description: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    status: TaskStatus = TaskStatus.PENDING
    progress: float = 0
    current_step: str | None = None
    current_step_description: str | None = None
    result: Any = None
    error: str | None = None
    attempts: int = 0
    priority: int = 0
    timeout_ms: int | None = None
    max_retries: int = 0
    #: Automatic retries used since the task was created or last retried by hand.
    auto_retries: int = 0
    dead_lettered: bool = False
    request_id: str | None = None
    created_at: int = 0
    updated_at: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    #: When a pending task waiting for its time starts: its delayed start (``startAt``) or
    #: an automatic retry's backoff.
    scheduled_at: int | None = None
    #: Why a pending task has not started, for a person, when something other than its turn
    #: holds it up: "waiting for a worker that runs `report`" (a shared backend whose live
    #: workers do not run its executor). Read-only: the store says it as it reads the task.
    waiting_reason: str | None = None
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    #: The executor's log lines, oldest first, within the TASK_LOG_* bounds (every attempt's:
    #: a retry does not clear them). See `async_tasks.task_log`.
    logs: list[LogLine] = msgspec.field(default_factory=list)
    #: How many of the oldest lines were dropped to stay within those bounds.
    logs_dropped: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration_ms(self) -> int | None:
        """Time spent in the last attempt, once it has finished."""
        if self.started_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.started_at


#: The encoded JSON of an empty object and of null: what a stored task holds when it has
#: no metadata or no result.
EMPTY_OBJECT: Final = msgspec.Raw(b"{}")
NULL: Final = msgspec.Raw(b"null")
_encode = msgspec.json.Encoder().encode


def encoded(value: Any) -> msgspec.Raw:
    """`value` as encoded JSON (unchanged when it already is)."""
    if isinstance(value, msgspec.Raw):
        return value
    if value is None:
        return NULL
    return msgspec.Raw(compact(_encode(value)))


#: Encoded JSON longer than this is copied to drop its buffer's slack (`compact`).
_SLACK_WORTH_DROPPING = 4096


def compact(data: bytes) -> bytes:
    """`data` as kept for long: msgspec's encoder returns its output buffer, with up to half
    again of spare room after the JSON; beyond a few KiB a copy keeps just the bytes."""
    return bytes(memoryview(data)) if len(data) > _SLACK_WORTH_DROPPING else data


class StoredTask(Task[Any], kw_only=True, gc=False):
    """A task as a store keeps it: `params`, `metadata` and `result` are their encoded
    JSON (`msgspec.Raw`), so what a task holds is proportional to its bytes (decoded, 64
    KiB of ``[{},{},...]`` takes 24 times that), and answering with it costs no encoding.

    It encodes to the same JSON as the `Task` it stands for. `decoded` gives the `Task`
    with values, its params as the executor's `Params` when given: what executors receive
    and what `TaskSystem`'s methods return. (No reference cycle can go through a stored
    task, so the garbage collector need not track it.)"""

    params: msgspec.Raw
    metadata: msgspec.Raw = EMPTY_OBJECT  # type: ignore[assignment]  # the encoded form of Task.metadata
    result: msgspec.Raw = NULL
    # A list only while entries are added to it: empty, it is the one empty tuple, and a
    # finished task's are tuples of their exact size (the memory store freezes them as the
    # task finishes; a retry makes them lists again). About 120 bytes less per retained task.
    tags: Sequence[str] = ()  # type: ignore[assignment]
    history: Sequence[HistoryEntry] = msgspec.field(default_factory=list)  # type: ignore[assignment]
    logs: Sequence[LogLine] = ()  # type: ignore[assignment]

    @classmethod
    def of(cls, task: Task[Any]) -> StoredTask:
        """`task` as stored (itself when it already is)."""
        if isinstance(task, StoredTask):
            return task
        fields = msgspec.structs.asdict(task)
        fields.update(params=encoded(task.params), metadata=encoded(task.metadata), result=encoded(task.result))
        return cls(**fields)

    def decoded(self, params_type: type[Any] | None = None) -> Task[Any]:
        """This task with its data decoded: params as `params_type` (plain JSON values
        without one), metadata and result as JSON values. Raises `msgspec.ValidationError`
        when the params do not fit `params_type`."""
        fields = msgspec.structs.asdict(self)
        fields["params"] = _decode(self.params, type=params_type) if params_type is not None else _decode(self.params)
        fields["metadata"] = {} if self.metadata is EMPTY_OBJECT else _decode(self.metadata)
        fields["result"] = None if self.result is NULL else _decode(self.result)
        fields["tags"] = list(self.tags)
        fields["history"] = list(self.history)
        fields["logs"] = list(self.logs)
        return Task(**fields)


_decode = msgspec.json.decode
