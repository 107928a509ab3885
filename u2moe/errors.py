"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """A problem with the user's input (file, config, request), not a bug.

    The CLI prints `u2moe <command>: error: <message>` and exits with status 2;
    the message must name the problem and the file or key it concerns.
    """
