"""`python -m platform.report`: see swinray.cli.report_main."""
from swinray.cli import report_main

if __name__ == "__main__":
    raise SystemExit(report_main())
