"""The ``grsai-pipeline`` console script (also ``python -m grsai_pipeline``)."""

import gc


def main() -> None:
    # Before any import: see grsai_pipeline/cli/process.py (the click group turns it back on).
    gc.disable()
    from grsai_pipeline.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
