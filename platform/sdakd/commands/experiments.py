"""`sdakd search`, `ablate`, `report`, `ui` and `list`: parsers and thin handlers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdakd.commands.common import overrides_arg


def cmd_search(args: argparse.Namespace) -> int:
    from sdakd.ray_adapter.search import run_named
    from sdakd.search.summary import print_summary

    summary = run_named(
        args.space, samples=args.samples, resume=args.resume, overrides=args.overrides, tracking_uri=args.tracking_uri
    )
    print_summary(summary)
    errored = [t for t in summary.trials if t["error"]]
    for trial in errored:
        print(f"trial {trial['trial_id']} failed: {trial['error']}", file=sys.stderr)
    return 1 if errored else 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from sdakd.ray_adapter.ablate import ablate

    return 0 if ablate(args.grid, seeds=args.seeds, force=args.force, uri=args.tracking_uri) else 1


def _names_a_search_space(name: str) -> bool:
    """A name only search_spaces/ has, or a YAML file holding a space's `parameters:` and no grid's `cells:`."""
    from sdakd.config.load import read_yaml
    from sdakd.config.project import project_names

    if name in project_names("ablations") or name in project_names("search_spaces"):
        return name not in project_names("ablations")
    data = read_yaml(name, kind="YAML file") if Path(name).is_file() else {}
    return "parameters" in data and "cells" not in data


def cmd_report(args: argparse.Namespace) -> None:
    if args.search or _names_a_search_space(args.grid):
        from sdakd.search.summary import best_table, load_named_space, load_summary, search_folder

        space, base = load_named_space(args.grid, args.overrides)
        print(best_table(load_summary(space, search_folder(space, base))))
        return
    from sdakd.ablate.report import report

    report(args.grid, uri=args.tracking_uri)


def cmd_ui(args: argparse.Namespace) -> int | None:
    from sdakd.tracking.store import SERVER_SCHEMES, check_port_free, check_reachable, resolve_uri, serve_ui

    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(SERVER_SCHEMES):
        check_reachable(uri)
        print(f"{uri} is a tracking server with its own UI: open it in a browser")
        return
    check_port_free(args.port)
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    return serve_ui(uri, args.port)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 0,1,2 (got {text!r})") from None


def cmd_list(args: argparse.Namespace) -> None:
    from sdakd.config.load import preset_names
    from sdakd.config.project import project_names
    from sdakd.methods import METHODS

    print("presets:  " + ", ".join(preset_names()))
    print("methods:  " + ", ".join(METHODS.names()))
    print("search spaces:  " + (", ".join(project_names("search_spaces")) or "none"))
    print("ablation grids: " + (", ".join(project_names("ablations")) or "none"))


def add_experiment_commands(sub: argparse._SubParsersAction, tracking: argparse.ArgumentParser) -> None:
    search = sub.add_parser(
        "search", parents=[tracking], help="Ray Tune + Optuna over a named search space (search_spaces/NAME.yaml)"
    )
    search.add_argument("space", help="a search space name (e.g. smoke, sdakd_core, pareto) or a YAML path")
    search.add_argument("--samples", type=int, help="number of trials (default: the space's `samples`)")
    search.add_argument("--resume", action="store_true", help="continue a search whose driver was stopped")
    overrides_arg(search, "dotted-path override of the base config, repeatable (run.out_dir: the search folder)")
    search.set_defaults(handler=cmd_search)

    ablate = sub.add_parser("ablate", parents=[tracking], help="run a named ablation grid (ablations/NAME.yaml)")
    ablate.add_argument("grid", help="a grid name (see `sdakd list`) or a YAML path")
    ablate.add_argument("--seeds", type=_seeds, help="comma-separated seeds, replacing the grid's (e.g. 0,1,2)")
    ablate.add_argument("--force", action="store_true", help="rerun cells that already finished")
    ablate.set_defaults(handler=cmd_ablate)

    report = sub.add_parser(
        "report", parents=[tracking], help="a grid's table (mean ± 95 %% CI) and Pareto plot, or a search's best trials"
    )
    report.add_argument("grid", help="a grid or search-space name (see `sdakd list`) or a YAML path")
    report.add_argument("--search", action="store_true", help="NAME is a search space (where a grid has the same name)")
    overrides_arg(report, "for a search: the --set values it ran with that move its folder (run.out_dir)")
    report.set_defaults(handler=cmd_report)

    ui = sub.add_parser("ui", parents=[tracking], help="the MLflow UI on the tracking store, at 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000, help="must be free; SIGTERM or Ctrl-C stop the server whole")
    ui.set_defaults(handler=cmd_ui)

    listing = sub.add_parser("list", help="presets, methods, search spaces and ablation grids")
    listing.set_defaults(handler=cmd_list)
