"""`python -m platform.quickstart`: see swinray.cli.quickstart_main."""
from swinray.cli import quickstart_main

if __name__ == "__main__":
    raise SystemExit(quickstart_main())
