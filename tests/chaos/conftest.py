"""The chaos test builds the same image as the compose tests (and skips with them)."""

from tests.compose.conftest import image  # noqa: F401  (the session's image fixture)
