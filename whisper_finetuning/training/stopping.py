"""Stop requests from a cluster or a person: SIGTERM and SIGUSR1 (what SLURM and Kubernetes
send before killing or preempting a job) and Ctrl-C.

During training a request is noted and honoured between optimizer steps, after an intra-epoch
checkpoint (``resilience.ResilientBrain``); elsewhere, and at a second request, the run stops
at once. Either way it exits with one line and a distinct status, and rerunning the same
command resumes.
"""

import contextlib
import logging
import signal
import sys

logger = logging.getLogger(__name__)

# EX_TEMPFAIL: "try again later", what a requeueing scheduler should see; 128 + 2 for Ctrl-C.
EXIT_STATUS = {signal.SIGTERM: 75, signal.SIGUSR1: 75, signal.SIGINT: 130}

_requested = None  # the signal received, if any
_deferred = False  # True while training can stop at a step boundary


class StopRequested(SystemExit):
    """The process ends for a stop request, with its exit status (not an error)."""


def install():
    """Handle the stop signals (call once, in the main thread)."""
    for signum in EXIT_STATUS:
        signal.signal(signum, _handle)


@contextlib.contextmanager
def deferred():
    """Inside, a first request waits for ``exit_now`` at a safe point (an optimizer step)."""
    global _deferred
    _deferred = True
    try:
        yield
    finally:
        _deferred = False


def requested():
    """Whether a stop was requested."""
    return _requested is not None


def exit_now(where):
    """Exit for the pending request, saying where the run stopped."""
    name = signal.Signals(_requested).name
    message = f"stopped by {name} {where}: rerun the same command to resume"
    logger.info(message)
    print(message, file=sys.stderr, flush=True)
    raise StopRequested(EXIT_STATUS[_requested])


def _handle(signum, frame):
    """Note a request; stop at once when no training step can finish it safely."""
    global _requested
    again = _requested is not None
    _requested = signum
    if _deferred and not again:
        logger.info(
            "%s received: stopping after the current optimizer step", signal.Signals(signum).name
        )
        return
    exit_now("at once" if again else "outside training")
