"""A module next to the test DAGs: tasks that call into it must work where they run."""


def shout(text: str) -> str:
    return text.upper() + "!"
