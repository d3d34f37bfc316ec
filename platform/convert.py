"""`python -m platform.convert`: see swinray.cli.convert_main."""
from swinray.cli import convert_main

if __name__ == "__main__":
    raise SystemExit(convert_main())
