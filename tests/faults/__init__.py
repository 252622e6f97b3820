"""Tools for the Redis backend's fault suite: the faults a scaled-out deployment meets,
made on demand and exactly where a test wants them. Import from the modules:

- `tests.faults.proxy`: `RedisFaultProxy`, a loopback proxy in front of a real
  redis-server that loses the reply to chosen commands after Redis ran them, hangs,
  drops connections and counts commands (also ``python -m tests.faults.proxy``).
- `tests.faults.commands`: which commands a fault applies to (`script`, `command`,
  `any_script`).
- `tests.faults.rules`: `Rule`, a fault and how the test waits until it happened.
- `tests.faults.redis_process`: `RedisProcess`, a throwaway redis-server to pause
  (SIGSTOP), kill and restart (with AOF, its data kept).
- `async_tasks.faults`: `crash_point(name)`, the hook production code calls at each
  hand-off (to be `async_tasks/faults.py`), and `tests.faults.crash_points`:
  `CrashPoint`, which arms a child to die there and tells that it did.
- `tests.faults.resp`: the RESP framing the proxy uses.

A fault test with them (the names of the backend's scripts and points are the lead's):

    async def test_a_lost_create_reply_creates_one_task(redis_url: str, tmp_path: Path) -> None:
        with RedisFaultProxy(redis_url) as proxy:
            rule = proxy.lose_reply(script(CREATE_LUA))
            async with serve_in_loop(make_app(task_backend=proxy.url)) as http:
                created = await http.post("/api/v1/tasks", json=...)
            await rule.wait_async()          # the reply was lost and redis-py re-sent
            ...                              # assert one task, pending counted once

    def test_an_api_killed_after_the_store_create(tmp_path: Path) -> None:
        with RedisProcess(appendonly=True) as redis:
            crash = CrashPoint("create.after_store", tmp_path / "crashed")
            api = subprocess.Popen([...], env=crash.environ({**base, "TASK_BACKEND": redis.url}))
            ...                              # POST a task (its answer never comes)
            crash.wait(api)                  # died there, and nowhere else
            ...                              # restart the API; the task runs or ends with a reason
"""
