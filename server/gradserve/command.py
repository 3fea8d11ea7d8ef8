"""The ``gradserve`` console script.

``gradserve health`` runs the probe in ``gradserve.health_probe`` without importing the server
(NumPy and the engine cost seconds, and probes run every few seconds); every other command
goes to ``gradserve.server.cli``. Ctrl-C before the server has installed its own handlers
exits quietly with status 130, the shell's convention, rather than a traceback; so does
output cut short by its reader (``gradserve ops list | head``).
"""

import os
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
    except BrokenPipeError:
        # Python's advice: point stdout at devnull, so that its flush at exit fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
