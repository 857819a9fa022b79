"""What can end a csbs command early, each with its exit code. Every one is printed as one line
(`error: ...`) by `commands.run`; none of them prints a traceback."""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1  # the service refused the request (its message names the rule or field)
EXIT_USAGE = 2  # the command line itself is wrong (as typer reports its own usage errors)
EXIT_UNREACHABLE = 3  # a region node or the coordinator did not answer
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it

START_HINT = (
    "is the cluster running? Start it with `make cluster` (`make cluster CONFIG=FILE` for "
    "another config; then give csbs the same file with --config FILE or CSBS_CONFIG)"
)


class CliError(Exception):
    """A command ends with a one-line message and an exit code."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, status: str = "") -> None:
        # One line, whatever the service sent: a multi-line message would read as two errors.
        super().__init__(" ".join(message.split()))
        self.message = " ".join(message.split())
        self.status = status  # the gRPC status code's name, when a process answered

    def as_json(self) -> dict[str, object]:
        """What `--json` prints on stderr (issue 14): one object a line."""
        return {
            "error": {"message": self.message, "status": self.status, "exit_code": self.exit_code}
        }


class Refused(CliError):
    """The service answered and refused (NOT_FOUND, FAILED_PRECONDITION, ...), or the work it
    accepted ended in failure."""

    exit_code = EXIT_REFUSED


class UsageError(CliError):
    """An option the service never saw is wrong: an unknown region, an unreadable file."""

    exit_code = EXIT_USAGE


class Unreachable(CliError):
    """A process of the cluster could not be reached, or did not answer in time."""

    exit_code = EXIT_UNREACHABLE


class Interrupted(CliError):
    """Ctrl-C while waiting: the waiting stopped, the work goes on; the message says how to
    follow it again."""

    exit_code = EXIT_INTERRUPTED
