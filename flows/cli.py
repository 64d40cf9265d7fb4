"""The `m2cd` console script: pipeline commands plus orchestration commands (serve, labels)."""

from __future__ import annotations

import sys

from pipeline.errors import M2CDError


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import register

    app = register()
    from flows import commands  # noqa: F401  (attaches serve/labels to the app)

    try:
        app(args=argv, standalone_mode=False)
    except M2CDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # typer/click exit codes
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
