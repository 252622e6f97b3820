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
- `tests.faults.resp`: the RESP framing the proxy uses.
"""
