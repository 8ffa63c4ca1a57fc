"""Command-line tools that are not DVC stages (python -m ganaug.tools.<name>)."""
