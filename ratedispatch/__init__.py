"""ratedispatch: a rate-limited task dispatcher for external HTTP APIs, on Redis Streams."""

from importlib.metadata import version

from .errors import ConfigError, InvalidTask, RatedispatchError
from .producer import build_entry, enqueue
from .settings import Settings, load_settings
from .task import Priority, Task, build_request, parse_entry
from .worker.dispatcher import Dispatcher
from .worker.outcome import Outcome, Verdict

# The version lives in pyproject.toml alone; the installed metadata carries it here.
__version__ = version("ratedispatch")

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
