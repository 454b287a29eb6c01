"""Packet sources. Each yields ``(ts, linktype, frame, wire_length)`` in capture time."""

from residency_monitor.capture.files import CaptureError, CaptureReader, CaptureStats, open_capture

__all__ = ["CaptureError", "CaptureReader", "CaptureStats", "open_capture"]
