"""The one exception the CLI turns into `one line per problem, exit code 2`."""


class TuneError(Exception):
    """A problem the user can fix; each entry of `problems` is printed as one line."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RecipeError(TuneError):
    """The recipe (file or --set overrides) is invalid."""


class DataError(TuneError):
    """A data file is missing, unreadable or has rows the format cannot use."""


class Interrupted(TuneError):
    """Ctrl-C: the run stopped where the user asked; the line says how to continue."""

    exit_code = 130


class TrainingError(TuneError):
    """Training started and had to stop (non-finite loss, out of memory, unusable checkpoint)."""

    exit_code = 3
