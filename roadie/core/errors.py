"""The one exception type for problems an operator can fix."""


class RoadieError(Exception):
    """A problem the user can fix: printed as one line, exit status 1, no traceback."""


class Interrupted(RoadieError):
    """The operator pressed Ctrl-C: the step in hand was finished or rolled back; exit status 130."""

    exit_code = 130
