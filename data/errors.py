"""The one exception type for bad data input; command-line entry points turn it into exit 2."""


class DataError(ValueError):
    """Bad user input: a malformed file, an unknown dataset name, a filter that emptied the data.

    The message is one line that names the input (file and line where there is one), so the CLI
    can print it as-is instead of a traceback.
    """


def located(path: object, line: int | None, problem: str, text: str | None = None) -> DataError:
    """A DataError naming `path`, its 1-based `line` and the offending `text`."""
    where = f"{path}" if line is None else f"{path}:{line}"
    shown = "" if text is None else f": {text[:200]!r}"
    return DataError(f"{where}: {problem}{shown}")
