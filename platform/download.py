"""`python -m platform.download`: see swinray.cli.download_main."""
from swinray.cli import download_main

if __name__ == "__main__":
    raise SystemExit(download_main())
