"""The gateway's error hierarchy; library exceptions are translated into these at the edge."""


class MillwrightError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(MillwrightError):
    """The configuration is invalid; `problems` holds one line per problem, naming its place."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class DriverError(MillwrightError):
    """A device driver failed in a way the runtime should report."""


class NotConnected(DriverError):
    """The device cannot be reached now; the runtime backs off and reconnects."""


class WriteFailed(DriverError):
    """The device refused or failed a write (an exception answer, a bad status); the
    message says what the device said. The command's result is `failed`."""


class UplinkError(MillwrightError):
    """The cloud uplink failed in a way that retrying will not fix (e.g. bad credentials)."""


class StoreError(MillwrightError):
    """The outbox cannot accept or hand out events (disk full, read-only, corrupt)."""
