"""Loaded into Celery's own worker (``--include=pywake``) when the interop suite runs it
with an AMQP broker: a timer that wakes its event loop every 0.2 s.

On py-amqp the worker's event loop (kombu's Hub) sleeps in ``poll`` until the next timer,
up to 10 s on an idle connection, and only between two sleeps does it apply pending QoS
changes (the prefetch increment for a held ETA task), flush the ack of a discarded ETA
message and notice a SIGTERM. On Redis the transport's own polling wakes it every
second or so. The suite checks semantics, not that latency; our binary does not need it.
"""
from celery.signals import worker_ready

WAKE_SECONDS = 0.2


@worker_ready.connect
def _wake_regularly(sender=None, **kwargs):
    timer = getattr(sender, "timer", None)
    if timer is not None:
        timer.call_repeatedly(WAKE_SECONDS, _noop)


def _noop():
    pass
