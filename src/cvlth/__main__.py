"""``python -m cvlth`` is the ``cvlth`` command (for environments without the console script)."""

from cvlth.cli import main

if __name__ == "__main__":
    main()
