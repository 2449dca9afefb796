"""python -m moejax {fit,predict,summary} --flag=value ...; --help lists the flags."""

from absl import flags

from moejax import cli

# absl's --help shows the main module's docstring and key flags: make them the CLI's.
__doc__ = cli.__doc__
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    cli.run()
