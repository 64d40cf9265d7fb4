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
    except Exception as exc:  # noqa: BLE001  (only transient faults are handled; others re-raised)
        return _transient(exc)
    return 0


def _transient(exc: Exception) -> int:
    """Storage/network outages and lost workers: one clear line and exit code 3 (retry later);
    finished blocks are kept, so the same command resumes. Anything else is a bug: re-raised."""
    from flows.faults import is_transient
    from pipeline.io.storage import redact

    if not is_transient(exc):
        raise exc
    print(
        f"error: storage or network unavailable ({type(exc).__name__}: {redact(str(exc))}); "
        "finished blocks are kept: run the same command again to resume",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
