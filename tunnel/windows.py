"""Flow-control window arithmetic (integers only; the connection makes frames).

Modelled on h2's ``WindowManager``: the receiver tracks how much credit the peer
still has, counts bytes the application has *consumed*, and decides when to return
credit. Returning credit in batches (once at least half the window is consumed)
keeps the WINDOW frame rate low without ever letting a fast sender run dry.

Auto-tuning (clock-free, in the spirit of QUIC / gRPC BDP window growth): when
the reader's consumption triggers a return and the reader keeps up - it has
drained everything delivered, or the peer's credit had fallen to a quarter of
the window or less since the last return (``_low_water``: the window limited
the sender) - the window doubles, as far as the caller's allowance lets it.
Bigger windows also mean fewer, larger batches per wake-up on both ends. A
reader that stops never consumes, and a slow one never drains, so neither
grows its window.
"""

from __future__ import annotations

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.limits import MAX_WINDOW_SIZE

__all__ = ["WindowManager"]


class WindowManager:
    """Our receive window for one stream or for the session.

    Attributes:
        max_window_size: The window we aim to keep granted.
        current_window_size: Credit the peer has left (bytes it may still send).
    """

    __slots__ = ("_bytes_processed", "_low_water", "current_window_size", "max_window_size")

    def __init__(self, max_window_size: int) -> None:
        self.max_window_size = max_window_size
        self.current_window_size = max_window_size
        self._bytes_processed = 0
        # Lowest credit the peer had since we last returned some (auto-tuning).
        self._low_water = max_window_size

    @property
    def pending(self) -> int:
        """Bytes consumed by the application whose credit is not returned yet."""
        return self._bytes_processed

    def window_consumed(self, size: int) -> None:
        """Record that the peer sent ``size`` flow-controlled bytes.

        Raises:
            LocalProtocolError: FLOW_CONTROL_ERROR if the peer sent more than granted.
        """
        current = self.current_window_size - size
        self.current_window_size = current
        if current < self._low_water:
            self._low_water = current
            if current < 0:
                raise LocalProtocolError("peer exceeded its window", ErrorCode.FLOW_CONTROL_ERROR)

    def window_opened(self, size: int) -> None:
        """Record that we granted ``size`` more bytes outside :meth:`process_bytes`.

        Raises:
            LocalProtocolError: FLOW_CONTROL_ERROR if the window would pass 2**31-1.
        """
        self.current_window_size += size
        if self.current_window_size > MAX_WINDOW_SIZE:
            raise LocalProtocolError("window above 2**31-1", ErrorCode.FLOW_CONTROL_ERROR)
        self.max_window_size = max(self.current_window_size, self.max_window_size)

    def process_bytes(
        self, size: int, growth_allowance: int = 0, *, drained: bool = False
    ) -> int | None:
        """Record that the application consumed ``size`` bytes.

        Args:
            size: Bytes consumed.
            growth_allowance: How much ``max_window_size`` may grow now if the
                reader keeps up (0: never grow). Growth is at most doubling
                per return; read ``max_window_size`` to see it.
            drained: The reader holds nothing more of this window's bytes.

        Returns:
            The increment to send in a WINDOW frame now, or None to wait.
        """
        self._bytes_processed += size
        return self._maybe_update_window(growth_allowance, drained)

    def _maybe_update_window(self, growth_allowance: int, drained: bool = False) -> int | None:
        # h2's rule: send when at least half the window is consumed, or when the
        # peer is completely out of credit and a little (min(1 KiB, window/4)) can
        # be returned - otherwise a small window could stall forever.
        processed = self._bytes_processed
        if not processed:
            return None
        max_increment = self.max_window_size - self.current_window_size
        if (
            self.current_window_size == 0 and processed > min(1024, self.max_window_size // 4)
        ) or processed >= self.max_window_size // 2:
            increment = min(processed, max_increment)
            self._bytes_processed = 0
            if growth_allowance > 0 and (
                drained or self._low_water <= self.max_window_size // 4
            ):
                growth = min(self.max_window_size, growth_allowance)
                self.max_window_size += growth
                increment += growth
            if increment <= 0:
                return None
            self.current_window_size += increment
            self._low_water = self.current_window_size
            return increment
        return None
