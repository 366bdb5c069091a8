"""``python -m vlv_pipeline`` runs the project like ``kedro run``: the same command
(``cli.py``'s ``run``: user errors as one message, ``--verbose``). ``python -m vlv_pipeline
publish DIR --repo-id ...`` runs ``cli.py``'s ``publish`` (as ``kedro publish`` does), and
``python -m vlv_pipeline demo [--env paper] [--port N]`` its ``demo`` (the demo page)."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args, **kwargs):
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    if not args and sys.argv[1:2] in (["publish"], ["demo"]):
        from vlv_pipeline import cli

        name = sys.argv[1]
        command = cli.publish if name == "publish" else cli.demo
        return command.main(sys.argv[2:], prog_name=f"{package_name} {name}", **kwargs)
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
