"""`distill cache` that sends itself SIGTERM right after writing its first shard (preemption, `docker stop`)."""

import os
import signal
import sys

import distill.cache as cache

original = cache.write_shard


def write_then_term(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)


cache.write_shard = write_then_term

if __name__ == "__main__":
    from distill.cli import main

    main(sys.argv[1:])
