"""``python -m catenary``: the ``catenary`` command, without relying on the script on PATH."""

from catenary.cli.main import main

if __name__ == "__main__":
    main()
