"""``vol-transfer recipe keys [RECIPE]``: every key a recipe may set, with type, default and meaning.

Examples:
    vol-transfer recipe keys                                         # segmentation recipes
    vol-transfer recipe keys recipes/brats_tc_finetune_cpu.yaml     # plus this recipe's values
    vol-transfer recipe keys --task classification
    vol-transfer recipe keys recipes/freeze_ablation_cpu.yaml | grep freezing
"""

from __future__ import annotations

import argparse
import os
import sys

from vol_transfer.commands import examples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipe", help="list the keys recipes accept (type, default, meaning)",
                                   **examples("vol-transfer recipe keys",
                                              "vol-transfer recipe keys recipes/brats_tc_finetune_cpu.yaml"))
    actions = parser.add_subparsers(dest="recipe_action", metavar="ACTION", required=True)
    keys = actions.add_parser(
        "keys", help="every key of a task's recipes: type, default, one line of meaning (and a recipe's values)",
        description="List every key a recipe of the task may set — what --set KEY=VALUE and an extending file can "
                    "change — with its type (choices, bounds), default and meaning. Keys of a kind-dependent section "
                    "(transfer.freezing, network, preprocessing.intensity[]) list the kinds, then each kind's options. "
                    "With RECIPE, the task is the recipe's and a column shows the value it resolves to.",
        **examples("vol-transfer recipe keys",
                   "vol-transfer recipe keys recipes/brats_tc_finetune_cpu.yaml",
                   "vol-transfer recipe keys --task classification",
                   "vol-transfer recipe keys recipes/hippocampus_pretrain_cpu.yaml | grep training."),
    )
    keys.add_argument("recipe", nargs="?", default=None, help="a recipe file (its task, and its values in a column)")
    keys.add_argument("--task", default=None, help="the task whose keys to list when no RECIPE is given "
                                                   "(segmentation, classification, pretext, study; default segmentation)")
    keys.set_defaults(handler=_keys)


def _keys(args: argparse.Namespace) -> int:
    from vol_transfer.errors import RecipeError
    from vol_transfer.recipe_keys import format_keys, recipe_values, schema_keys
    from vol_transfer.recipes import get_task, load_recipe_dict, resolve_recipe

    values = None
    if args.recipe is not None:
        task = load_recipe_dict(args.recipe).get("task")
        if args.task is not None and args.task != task:
            raise RecipeError("--task", f"{args.recipe} is a {task!r} recipe", "drop --task, or give a recipe of that task")
        task, config = resolve_recipe(args.recipe, command=None)
        values = recipe_values(config)
    else:
        task = args.task or "segmentation"
    spec = get_task(task, where="--task")
    text = (f"keys of a '{task}' recipe (run by vol-transfer {spec.command}); set one with --set KEY=VALUE"
            + (f"; values: {args.recipe} resolved" if values is not None else "") + "\n"
            + format_keys(schema_keys(spec.config_cls), values))
    try:
        print(text)
    except BrokenPipeError:  # `| head` closed the pipe: nothing more to say
        sys.stdout = open(os.devnull, "w")
    return 0
