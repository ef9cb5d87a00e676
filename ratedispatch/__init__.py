"""ratedispatch: a rate-limited task dispatcher for external HTTP APIs, on Redis Streams."""

from .errors import ConfigError, InvalidTask, RatedispatchError
from .producer import build_entry, enqueue
from .settings import Settings, load_settings
from .task import Priority, Task, build_request, parse_entry
from .worker.dispatcher import Dispatcher
from .worker.outcome import Outcome, Verdict

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Dispatcher",
    "InvalidTask",
    "Outcome",
    "Priority",
    "RatedispatchError",
    "Settings",
    "Task",
    "Verdict",
    "__version__",
    "build_entry",
    "build_request",
    "enqueue",
    "load_settings",
    "parse_entry",
]
