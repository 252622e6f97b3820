"""What the Redis and PostgreSQL backends share: the shape of a backend whose store delivers.

Both keep every task and its delivery in one shared store and change the two in one
atomic step (a Lua script, a transaction); SAQ hands each attempt to a worker's own queue.
What follows from that is written once here, against `QueueStore` (the store methods it
calls): `producer` (`QueuedExecution`, what API processes hand over), `worker`
(`QueuedWorker`, which runs attempts) with its progress `sink`, and `reconciler` (repairs
what a dead worker left). Each backend's package keeps what is its own: the store (its
scripts or SQL), the connection, how its SAQ queue is built and watched, the channels.
"""
