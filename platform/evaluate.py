"""`python -m platform.evaluate`: see swinray.cli.evaluate_main."""
from swinray.cli import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())
