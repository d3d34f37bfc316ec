"""`python -m platform.preprocess`: see swinray.cli.preprocess_main."""
from swinray.cli import preprocess_main

if __name__ == "__main__":
    raise SystemExit(preprocess_main())
