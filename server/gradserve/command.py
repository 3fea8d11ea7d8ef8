"""The ``gradserve`` console script.

``gradserve health`` runs the probe in ``gradserve.health_probe`` without importing the server
(NumPy and the engine cost seconds, and probes run every few seconds); every other command
goes to ``gradserve.server.cli``. Ctrl-C before the server has installed its own handlers
exits quietly with status 130, the shell's convention, rather than a traceback.
"""

import sys


def main() -> int:
    try:
        if sys.argv[1:2] == ["health"]:
            from gradserve import health_probe

            return health_probe.main(sys.argv[2:])
        from gradserve.server import cli

        return cli.main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
