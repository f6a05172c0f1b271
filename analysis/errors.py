"""The one exception type for bad analysis input; the command line turns it into exit status 2."""


class FitError(ValueError):
    """Bad input to a fit, a table or a figure: too few points, a missing column, NaN, x <= 0 under a log.

    The message is one line that names the input (file, column, row) so the CLI can print it as-is.
    """
