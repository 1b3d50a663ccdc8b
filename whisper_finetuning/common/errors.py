"""The one exception type a user can act on: entry points print it as ``error: <message>``."""


class RecipeError(Exception):
    """A problem the user can fix (a setting, a file, the machine), said in one line."""
