"""`distill cache` that signals its own process right after writing its first shard (fault tests): SIGKILL, or the
signal named by `DISTILL_TEST_SIGNAL` (e.g. `SIGTERM`, as preemption or `docker stop` sends).

Run as a script so that Lightning's DDP launcher starts the other ranks with the same patch.
"""

import os
import signal
import sys

import distill.cache as cache

original = cache.write_shard
SIGNAL = getattr(signal, os.environ.get("DISTILL_TEST_SIGNAL", "SIGKILL"))


def write_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    original(*args, **kwargs)
    os.kill(os.getpid(), SIGNAL)


cache.write_shard = write_then_die

if __name__ == "__main__":
    from distill.cli import main

    main(sys.argv[1:])
