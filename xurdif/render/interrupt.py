"""Ctrl-C during a render: the first finishes the batch in flight and stops, the second stops now."""
from __future__ import annotations

import contextlib
import signal
import threading

from tqdm import tqdm


@contextlib.contextmanager
def stop_on_sigint():
    """A flag {"stop": bool} the first Ctrl-C sets; the second raises KeyboardInterrupt.
    Outside the main thread (the studio's workers) signals cannot be caught: a no-op."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        tqdm.write("Ctrl-C: finishing the current batch, then stopping (Ctrl-C again to abort)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)
