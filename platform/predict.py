"""`python -m platform.predict`: see swinray.cli.predict_main."""
from swinray.cli import predict_main

if __name__ == "__main__":
    raise SystemExit(predict_main())
