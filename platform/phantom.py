"""`python -m platform.phantom`: see swinray.cli.phantom_main."""
from swinray.cli import phantom_main

if __name__ == "__main__":
    raise SystemExit(phantom_main())
