"""One exception hierarchy; every message is the sentence an operator reads."""


class RatedispatchError(Exception):
    """Base of every error ratedispatch raises on purpose."""


class ConfigError(RatedispatchError):
    """A setting is missing or has a value that cannot work."""


class InvalidTask(RatedispatchError):
    """A stream entry cannot become a request; the message is the dead letter's reason."""

    @property
    def reason(self) -> str:
        return str(self)
