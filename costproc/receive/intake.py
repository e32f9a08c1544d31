"""What every receiver does with a request body, whatever the protocol.

    refusal()? -> decode once -> count intake -> roll up -> forward the original bytes

Receivers call `refusal()` first: while the rollup's open state is above its
watermark, or the forward queue is full, a request is refused with a retryable
status instead of being accepted and then dropped. The check and the hand-off run
on the event loop without an await between them, so what was admitted fits.
"""

from __future__ import annotations

from typing import Protocol

from costproc.model import IntakeSink
from costproc.receive.decode import Decoded, Decoder
from costproc.rollup.rollup import Rollup

RETRY_AFTER_SECONDS = 1  # what refused clients are told to wait; state drains within seconds


class RawForwarder(Protocol):
    """Passes request bodies on downstream (see costproc.export.forward)."""

    def has_room(self) -> bool:
        """True while the forward queue can take another request."""

    def offer(self, body: bytes) -> None:
        """Queue one OTLP ExportTraceServiceRequest body, unchanged."""


class Intake:
    """Admits, decodes, counts, rolls up and forwards request bodies."""

    def __init__(
        self,
        decoder: Decoder,
        rollup: Rollup,
        sink: IntakeSink,
        forwarder: RawForwarder | None = None,
    ):
        self.decoder = decoder
        self.rollup = rollup
        self.sink = sink
        self.forwarder = forwarder

    def refusal(self) -> str | None:
        """Why a request must be refused now (then the client retries later), or None."""
        reason = self.rollup.pressure()
        if reason is None and self.forwarder is not None and not self.forwarder.has_room():
            reason = "forward_queue_full"
        if reason is not None:
            self.sink.requests_refused(reason)
        return reason

    def take(self, body: bytes) -> Decoded:
        """Decode and process one request; raises DecodeError if it is not OTLP traces."""
        decoded = self.decoder.decode(body)
        self.sink.spans_received(decoded.received)
        for reason, count in decoded.rejected.items():
            self.sink.spans_rejected(reason, count)
        if decoded.spans:
            duplicates = self.rollup.add(decoded.spans)
            self.sink.spans_dropped("duplicate", duplicates)
            if self.rollup.dropped_untagged:
                self.sink.spans_dropped("untagged", self.rollup.dropped_untagged)
                self.rollup.dropped_untagged = 0
        if self.forwarder is not None:
            self.forwarder.offer(body)
        return decoded
