"""`python -m platform.doctor`: see swinray.cli.doctor_main."""
from swinray.cli import doctor_main

if __name__ == "__main__":
    raise SystemExit(doctor_main())
