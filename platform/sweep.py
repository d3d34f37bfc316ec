"""`python -m platform.sweep`: see swinray.cli.sweep_main."""
from swinray.cli import sweep_main

if __name__ == "__main__":
    raise SystemExit(sweep_main())
