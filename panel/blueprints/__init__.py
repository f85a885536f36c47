"""One blueprint per area; each keeps its templates in a folder of the same name."""

from flask import Flask


def register_all(app: Flask) -> None:
    pass
