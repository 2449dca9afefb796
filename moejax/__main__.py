"""python -m moejax {fit,predict} ...: see moejax/cli.py."""

from moejax.cli import run

if __name__ == "__main__":
    run()
