"""comptune: edit language models in their parameter-component basis."""

__version__ = "0.1.0"
