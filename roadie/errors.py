"""The one exception type for problems an operator can fix."""


class RoadieError(Exception):
    """A problem the user can fix: printed as one line, exit status 1, no traceback."""
