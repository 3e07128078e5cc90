"""``vol-transfer demo``: the whole transfer story on synthetic data, in minutes on a CPU.

1. write small synthetic hippocampus-like and tumour-like datasets (NIfTI + manifests);
2. pre-train a quarter-width HighRes3DNet on the hippocampus task;
3. fine-tune it on tumour core with ``conv_0`` frozen (the study's "model 1"), and train the same
   network from scratch for comparison, same seed and iterations;
4. run inference on the test volumes, writing label maps as NIfTI in each input's geometry;
5. print the Dice table and the commands that do the same on real data.

Every stage is an ordinary recipe run, so its folder holds ``recipe.yaml``, checkpoints,
``metrics.csv`` and TensorBoard logs.

Example (a few minutes of CPU training, so not run here; ``vol-transfer demo`` does the same)::

    run_demo(Path("runs/demo"), DemoSizes(pretrain_iterations=200, finetune_iterations=200))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vol_transfer.demo.synthetic import write_dataset
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.recipes import from_dict, recipe_to_yaml

REAL_DATA_COMMANDS = """\
The same on real data (../shared/data or --data-root DIR):
  vol-transfer train recipes/hippocampus_pretrain_cpu.yaml --run-dir runs/hippocampus_pretrain_cpu
  vol-transfer train recipes/brats_tc_finetune_cpu.yaml --run-dir runs/brats_tc_finetune_cpu
  vol-transfer train recipes/brats_tc_scratch_cpu.yaml --run-dir runs/brats_tc_scratch_cpu
  vol-transfer infer --checkpoint runs/brats_tc_finetune_cpu/checkpoints/best.pt \\
      data_manifests/brats2015_flair_t1c.csv --split test --out runs/brats_predictions
  vol-transfer study recipes/freeze_ablation_cpu.yaml --out runs/freeze_ablation_cpu
(drop _cpu for the study's full settings on a GPU)"""


@dataclass
class DemoSizes:
    """How big the demo is; the defaults finish in a few minutes on 2 CPU cores."""

    hippocampus_cases: int = 24
    tumour_cases: int = 12
    pretrain_iterations: int = 150
    finetune_iterations: int = 100
    window: int = 32
    width: float = 0.25
    threads: int = 2


def _recipe(manifest: Path, data_root: Path, iterations: int, sizes: DemoSizes, **sections: Any) -> dict:
    recipe: dict[str, Any] = {
        "description": "vol-transfer demo (synthetic data)",
        "data": {"manifest": str(manifest), "data_root": str(data_root)},
        "preprocessing": {"orientation": "RAS", "intensity": [{"kind": "zscore", "mask": "nonzero"}]},
        "sampler": {"kind": "balanced", "augmentation": {"enabled": True, "rotation_degrees": 10, "scaling": 0.1}},
        "network": {"name": "highres3dnet", "options": {"width": sizes.width}},
        "optim": {"name": "adam", "lr": 3e-3, "schedule": {"kind": "poly", "warmup_iterations": 10}},
        "loss": {"kind": "dice_ce"},
        "training": {"iterations": iterations, "batch_size": 2, "window": [sizes.window] * 3, "precision": "fp32",
                     "threads": sizes.threads, "seed": 0, "log_every": 10},
        "validation": {"every": max(iterations // 3, 1)},
        "checkpoint": {"every": max(iterations // 3, 1)},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def _train(recipe: dict, run_dir: Path, say: Callable[[str], None]) -> dict:
    from vol_transfer.training.segmentation import SegmentationConfig, run_segmentation

    config = from_dict(SegmentationConfig, recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", recipe_to_yaml("segmentation", config))
    started = time.perf_counter()
    summary = run_segmentation(config, run_dir, progress=True)
    say(f"  {run_dir.name}: best validation Dice {summary.get('best_val_dice', float('nan')):.3f} "
        f"in {time.perf_counter() - started:.0f} s")
    return summary


def run_demo(out: Path, sizes: DemoSizes | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out``; return the per-arm test Dice and the run folders."""
    from vol_transfer.inference.predict import InferenceOptions
    from vol_transfer.inference.predictor import Predictor
    from vol_transfer.io.case_inputs import discover_cases
    from vol_transfer.studies.evaluate import evaluate_checkpoint

    sizes = sizes or DemoSizes()
    out = Path(out)
    started = time.perf_counter()
    data = out / "data"
    say(f"1/5 writing synthetic data to {data}")
    hippocampus = write_dataset(data, "hippocampus", sizes.hippocampus_cases, seed=1)
    tumour = write_dataset(data, "tumour", sizes.tumour_cases, seed=2, splits=(0.5, 0.25))

    say("2/5 pre-training HighRes3DNet on the hippocampus-like task")
    source_dir = out / "hippocampus_pretrain"
    _train(_recipe(hippocampus, data, sizes.pretrain_iterations, sizes,
                   data={"label_mapping": "hippocampus"}), source_dir, say)
    source = source_dir / "checkpoints" / "best.pt"

    say("3/5 fine-tuning on tumour core with conv_0 frozen (model 1), and from scratch")
    tumour_data = {"label_mapping": "brats_tc_2017"}  # tumour core = labels {1, 4}
    arms = {
        "model_1": _recipe(tumour, data, sizes.finetune_iterations, sizes, data=tumour_data,
                           transfer={"source": str(source), "channel_adaptation": "repeat",
                                     "freezing": {"kind": "freeze_first", "k": 1}}),
        "scratch": _recipe(tumour, data, sizes.finetune_iterations, sizes, data=tumour_data),
    }
    for name, recipe in arms.items():
        _train(recipe, out / f"tumour_{name}", say)

    say("4/5 inference on the test volumes (NIfTI out, input geometry kept)")
    options = InferenceOptions(progress=False)
    checkpoint = out / "tumour_model_1" / "checkpoints" / "best.pt"
    predictor = Predictor.from_checkpoint(checkpoint, options)
    cases = discover_cases([tumour], predictor.channels, data_root=data, split="test")
    predictor.run(cases, out / "predictions", overwrite=True, say=lambda text: None)

    say("5/5 Dice on the test volumes (tumour core)")
    table = {name: evaluate_checkpoint(out / f"tumour_{name}" / "checkpoints" / "best.pt", tumour, data, ["test"],
                                       options)["test"] for name in arms}
    lines = ["| arm | mean test Dice | per case |", "|---|---|---|"]
    for name, scores in table.items():
        lines.append(f"| {name} | {np.mean(scores):.3f} | {', '.join(f'{s:.3f}' for s in scores)} |")
    report = "\n".join(lines)
    atomic_write_text(out / "dice.md", report + "\n")
    say(report)
    say("(minutes of CPU training on synthetic data: this checks the pipeline, it is no evidence for or against "
        "transfer — the real comparison is the freezing study below)")
    say(f"predictions: {out / 'predictions'}   TensorBoard: tensorboard --logdir {out}")
    say(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    say(REAL_DATA_COMMANDS)
    return {"dice": table, "out": str(out)}
