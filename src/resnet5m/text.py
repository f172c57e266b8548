"""Small helpers for the words the package prints."""


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs', '1,000 images'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
