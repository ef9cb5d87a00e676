"""The task stream, its consumer group's pending list, the priority and retry indexes, and the
consumers: every Redis command on them, one script per move."""

from .consumers import Consumers
from .entries import Entry, Grant, Success, Take, TakeStatus, read_stream
from .queue import Queue

__all__ = ["Consumers", "Entry", "Grant", "Queue", "Success", "Take", "TakeStatus", "read_stream"]
