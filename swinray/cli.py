"""Command lines: argument parsing -> typed config -> ``run_*()``; one ``*_main()`` per verb.

Every verb takes ``--preset NAME``, ``--set KEY=VALUE`` (repeatable, any field) and a few
shortcut flags for the fields people set most. Precedence: override > preset > default.
Progress goes to stderr; the last line on stdout is one JSON summary for scripts.

    python -m platform.phantom --out outputs/phantom --cases 8
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from swinray import config as C
from swinray import interrupt
from swinray import presets as P
from swinray.errors import UserError
from swinray.resolve import CONFIG_FILE, REQUESTED_FILE, evaluation_dir, output_root_note, run_dir, save
from swinray.storage import shown

Shortcut = tuple[str, str, str]  # (flag, dotted config key, help)


class _Parser(argparse.ArgumentParser):
    """Argument errors end like every other user error: one line and the JSON summary (``main``)."""

    def error(self, message: str):
        raise C.ConfigError(f"{message} (see python -m {self.prog.split()[-1]} --help)")


def log(message: str) -> None:
    """Progress for people, on stderr so stdout stays one JSON line."""
    print(f"[swinray] {message}", file=sys.stderr, flush=True)


def emit(summary: dict[str, Any]) -> None:
    """The one line of JSON that ends every command."""
    print(json.dumps(summary, default=str), flush=True)


def _parser(verb: str, cls: type, description: str, shortcuts: list[Shortcut],
            positional: str | None = None) -> argparse.ArgumentParser:
    defaults = C.flat_items(P.preset(cls, "default"))
    keys = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in defaults.items())
    parser = _Parser(
        prog=f"python -m platform.{verb}", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets: {', '.join(P.PRESETS[cls])}\nsettable keys (--set KEY=VALUE) and their defaults:\n{keys}")
    if positional:
        choices = typing.get_args(C.field_types(cls)[positional])
        parser.add_argument(positional, nargs="?", default=None, choices=choices or None,
                            help=f"sets {positional}")
    parser.add_argument("--preset", default="default", help="named preset (default: %(default)s)")
    parser.add_argument("--config", metavar="FILE", help="a saved config.json to start from instead of a preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, then exit without running (nothing is saved)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's worker logs and INFO lines (quiet by default; they stay in "
                             "Ray's session logs)")
    types = C.field_types(cls)
    for flag, key, help_text in shortcuts:
        many = typing.get_origin(types[key]) is tuple      # --unlabelled A B C as well as A,B,C
        parser.add_argument(flag, dest=key, default=None, metavar=key.split(".")[-1].upper(),
                            nargs="+" if many else None, help=f"{help_text} (sets {key})")
    return parser


def requested_config(cls: type, args: argparse.Namespace, shortcuts: list[Shortcut], positional: str | None = None):
    """Preset (or saved config) -> positional and shortcut flags -> --set overrides, validated."""
    cfg = starting_config(cls, Path(args.config)) if args.config else P.preset(cls, args.preset)
    keys = [key for _, key, _ in shortcuts] + ([positional] if positional else [])
    values = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    flagged = [f"{key}={','.join(v) if isinstance(v, list) else v}" for key, v in values.items()]
    keys_set = [item.partition("=")[0] for item in args.overrides]
    twice = sorted({key for key in keys_set if keys_set.count(key) > 1})
    if twice:       # the last would win silently: ssl_set=a=1 --set ssl_set=b=2 keeps b only
        raise C.ConfigError(f"--set {twice[0]} is given more than once; give it once (a list as a,b)")
    return C.apply_overrides(cfg, C.parse_assignments(flagged + args.overrides, cfg))


def starting_config(cls: type, path: Path):
    """A saved config to start from. A run's ``config.json`` is resolved for its data and storage, so
    the request it came from (``config.requested.json`` beside it) is read instead: resolved again it
    gives the same config, and with other data or another name it is resolved for those."""
    requested = path.with_name(REQUESTED_FILE)
    if path.name == CONFIG_FILE and requested.is_file():
        log(f"--config {path}: starting from the request it was resolved from, {requested}")
        path = requested
    return C.load_config(cls, path)


@dataclass(frozen=True)
class Verb:
    cls: type                               # the command's config dataclass
    description: str
    shortcuts: list[Shortcut]
    run: str                                # "module:function": config (or Resolved) -> JSON summary
    resolve: str = ""                       # "module:function": config -> Resolved, before any work; its
                                            # config.json goes to the run's folder. "" = runs as requested
    config_path: Callable[[Any], Path] | None = None   # where an unresolved command's config is saved
    positional: str | None = None           # config key set by an optional first argument


def _function(name: str) -> Callable:
    """Import a verb's function when it runs, so --help and config errors stay free of torch and Ray."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_verb(verb: str, argv: list[str] | None = None) -> dict:
    """Parse the config, resolve and save it, run the verb; return its JSON summary."""
    return _run_parsed(verb, _parse(verb, argv))


def _parse(verb: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--help`` prints (to stdout) and exits here, an unknown flag is a ConfigError."""
    spec = VERBS[verb]
    return _parser(verb, spec.cls, spec.description, spec.shortcuts, spec.positional).parse_args(argv)


def _run_parsed(verb: str, args: argparse.Namespace, reached: dict | None = None) -> dict:
    """``reached`` gets the saved config's path as soon as there is one (an interrupted command says it)."""
    spec = VERBS[verb]
    if args.verbose:
        from swinray.runtime import VERBOSE_ENV  # not at the top: --help stays free of Ray
        os.environ[VERBOSE_ENV] = "1"
    cfg = requested_config(spec.cls, args, spec.shortcuts, spec.positional)
    if output_root_note():
        log(output_root_note())
    work = resolved = _function(spec.resolve)(cfg, log) if spec.resolve else None
    if resolved:
        cfg, path = resolved.cfg, Path(resolved.paths.run_dir) / CONFIG_FILE
    else:
        work, path = cfg, spec.config_path(cfg)
    if args.print_config:             # prints only: a finished run's files stay as they are
        log(f"{verb} config ({args.config or 'preset ' + args.preset}):\n" + json.dumps(C.to_dict(cfg), indent=2))
        return {"command": verb, "config_path": shown(path), "config": C.to_dict(cfg)}
    saved = save(resolved) if resolved else C.save_config(cfg, path)
    if reached is not None:
        reached["config_path"] = shown(saved)
    log(f"{verb} config ({args.config or 'preset ' + args.preset}), saved to {shown(saved)}:\n"
        + json.dumps(C.to_dict(cfg), indent=2))
    start = time.perf_counter()
    summary = _function(spec.run)(work, log)
    return {**summary, "config_path": shown(saved), "seconds": round(time.perf_counter() - start, 2)}


def main(verb: str, argv: list[str] | None = None) -> int:
    """Run a verb; a problem the user can fix (settings, data, environment) is one clear line and
    ``ok: false``, not a traceback; Ctrl-C or SIGTERM is ``interrupted: true`` and exit code 130,
    however the libraries at work ended on it. Stdout is the JSON line only."""
    stop, reached = interrupt.Watch(), {"command": verb}
    try:
        args = _parse(verb, argv)               # --help prints to stdout and exits here
        with stop, _stdout_to_stderr():
            try:
                summary = _run_parsed(verb, args, reached)
            except BaseException:
                _disconnect_ray(grace_s=1.0)    # failed or stopped: Ray Data's threads may never end by themselves
                raise
            _disconnect_ray()
        code = 0 if summary.get("ok", True) else 1
    except UserError as e:
        log(f"error: {e}")
        summary = {"command": verb, "ok": False, "error": str(e)}
        code = 2 if isinstance(e, C.ConfigError) else 1     # 2: the command line itself, as argparse says
    except BaseException as e:
        if stop.signal is None:
            raise
        summary = {**reached, **(e.reached if isinstance(e, interrupt.Interrupted) else {})}
    if stop.signal is not None:
        name = interrupt.name(stop.signal)
        message = f"interrupted by {name}; run the same command again to resume"
        log(message)
        summary = {**summary, "ok": False, "interrupted": True, "signal": name, "error": message}
        code = interrupt.EXIT_CODE
    emit(summary)
    return code


@contextlib.contextmanager
def _stdout_to_stderr():
    """While a command runs, whatever is written to stdout (Ray's and Tune's banners, a library's
    print, even from C) goes to stderr, so the summary is the only line on stdout."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):     # no stdout at all (closed): nothing to keep clean
        yield
        return
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _disconnect_ray(grace_s: float = 10.0) -> None:
    """Leave Ray before the summary: workers' logs reach the driver asynchronously, and one
    arriving after the JSON (seen under ``ray job submit``) would no longer end the output."""
    if "ray" in sys.modules:            # a verb that never used Ray does not import it here
        from swinray.runtime import shutdown_ray
        shutdown_ray(grace_s=grace_s)


def _run_config_path(cfg) -> Path:
    return run_dir(cfg.run.storage, cfg.run.name) / "config.json"


def _report_config_path(cfg: C.ReportConfig) -> Path:
    from swinray.report.write import report_dir
    return report_dir(cfg) / "config.json"


# --------------------------------------------------------------------------------------------
# Verbs
# --------------------------------------------------------------------------------------------

_DATA_FLAGS: list[Shortcut] = [
    ("--data", "data.source", "dataset folder or dataset file (default: the built-in phantom)"),
    ("--task", "data.task", "registry task name, or auto"),
]
_UNLABELLED_FLAG: Shortcut = ("--unlabelled", "data.unlabelled",
                              "pretraining corpus: folders of unlabelled volumes, or .txt files listing folders")

VERBS: dict[str, Verb] = {
    "phantom": Verb(C.PhantomConfig,
                    "Write the built-in synthetic abdominal CT phantom as an MSD-layout dataset.",
                    [("--out", "out_dir", "output folder"), ("--cases", "num_cases", "number of cases"),
                     ("--seed", "seed", "random seed")],
                    "swinray.data.phantom:run_phantom",
                    config_path=lambda cfg: Path(cfg.out_dir) / "phantom_config.json"),
    "preprocess": Verb(C.PreprocessConfig, "Preprocess a dataset into a reusable cache with Ray Data.",
                       _DATA_FLAGS + [_UNLABELLED_FLAG], "swinray.data.preprocess:preprocess",
                       resolve="swinray.resolve:resolve_preprocess"),
    "pretrain": Verb(C.PretrainConfig,
                     "Self-supervised pretraining of the Swin UNETR encoder with Ray Train.",
                     _DATA_FLAGS + [_UNLABELLED_FLAG, ("--name", "run.name", "run name; the same name resumes"),
                                    ("--workers", "run.num_workers", "Ray Train workers")],
                     "swinray.train.pretrain:pretrain", resolve="swinray.resolve:resolve_pretrain"),
    "finetune": Verb(C.FinetuneConfig,
                     "Fine-tune Swin UNETR for segmentation with Ray Train; keeps the best model by validation Dice.",
                     _DATA_FLAGS + [("--pretrained", "seg.pretrained", "SSL encoder weights to start from"),
                                    ("--label-fraction", "split.label_fraction", "train on this fraction of cases"),
                                    ("--fold", "split.fold", "cross-validation fold"),
                                    ("--name", "run.name", "run name; the same name resumes"),
                                    ("--workers", "run.num_workers", "Ray Train workers")],
                     "swinray.train.finetune:finetune", resolve="swinray.resolve:resolve_finetune"),
    "sweep": Verb(C.SweepConfig,
                  "Sweep fine-tuning hyperparameters per task: Ray Tune trials, Optuna TPE, ASHA early stopping, Aim.",
                  [("--data", "finetune.data.source", "dataset folder (with --tasks: the folder holding task folders)"),
                   ("--task", "finetune.data.task", "registry task name, or auto"),
                   ("--tasks", "tasks", "comma-separated task names, or all"),
                   ("--trials", "trials", "trials per task"),
                   ("--pretrained", "finetune.seg.pretrained", "SSL encoder weights trials may start from"),
                   ("--name", "name", "sweep name; the same name restores the sweep")],
                  "swinray.sweep.run:sweep", resolve="swinray.resolve:resolve_sweep"),
    "evaluate": Verb(C.EvaluateConfig,
                     "Score a fine-tuned model on a dataset's labelled cases (by default the run's held-out test "
                     "cases and any it never saw): Dice and HD95 per class.",
                     [("--checkpoint", "checkpoint", "model.pt written by finetune"),
                      ("--data", "data", "MSD-format folder or dataset file"),
                      ("--split", "split", "which cases, by the run's split.json: test, validation, train or all"),
                      ("--out", "out_dir", "the folder that holds each evaluation's own folder")],
                     "swinray.seg.evaluate:run_evaluate", config_path=lambda cfg: evaluation_dir(cfg) / "config.json"),
    "predict": Verb(C.PredictConfig,
                    "Segment NIfTI files; label maps keep each input's shape, spacing and affine.",
                    [("--checkpoint", "checkpoint", "model.pt written by finetune"),
                     ("--input", "input", "a NIfTI file or a folder of them"),
                     ("--output", "output", "output folder")],
                    "swinray.seg.predict:run_predict",
                    config_path=lambda cfg: _function("swinray.seg.predict:output_dir")(cfg) / "config.json"),
    "download": Verb(C.DownloadConfig,
                     "Download an MSD task (or all ten) from its official distribution, MD5-checked and resumable, "
                     "then validate every case.",
                     [("--task", "task", "MSD task name, e.g. Task04_Hippocampus, or all"),
                      ("--root", "root", "folder the task folders go into")],
                     "swinray.data.download:run_download",
                     config_path=lambda cfg: Path(cfg.root) / "download_config.json"),
    "convert": Verb(C.ConvertConfig,
                    "Turn published data into a layout the platform reads: btcv = BTCV's RawData into the "
                    "reference dataset_0.json layout (validation on cases 35-40).",
                    [("--src", "src", "the downloaded data (btcv: the RawData folder)"),
                     ("--out", "out", "output folder")],
                    "swinray.data.convert:run_convert",
                    config_path=lambda cfg: Path(cfg.out or "outputs") / "convert_config.json", positional="format"),
    "report": Verb(C.ReportConfig,
                   "Write a shareable report of a sweep from Aim: Markdown, Dice curves, hyperparameters against "
                   "Dice, Dice per class of the best run.",
                   [("--aim-repo", "aim_repo", "Aim repo folder (holding .aim)"),
                    ("--experiment", "experiment", "the sweep's name (its Aim experiment)"),
                    ("--out", "out_dir", "output folder")],
                   "swinray.report.write:run_report", config_path=_report_config_path),
    "doctor": Verb(C.DoctorConfig,
                   "Check that Ray can run this project: library imports on workers, Train all-reduce.",
                   [("--workers", "run.num_workers", "Ray Train workers to start")],
                   "swinray.doctor:run_doctor", config_path=_run_config_path),
    "bench": Verb(C.BenchConfig, "Measure ours against the baseline a user would write, in one run.",
                  _DATA_FLAGS + [("--pretrained", "pretrained",
                                  "label-efficiency: SSL encoder file(s), comma-separated"),
                                 ("--fractions", "fractions", "label-efficiency: label fractions, e.g. 0.1,0.25,1.0")],
                  "swinray.bench:run_bench", config_path=lambda cfg: Path(cfg.out_dir) / "config.json",
                  positional="target"),
    "quickstart": Verb(C.QuickstartConfig,
                       "Run the whole platform on the built-in phantom, step by step.",
                       [], "swinray.quickstart:run_quickstart", config_path=_run_config_path),
}


def phantom_main(argv=None) -> int:
    return main("phantom", argv)


def download_main(argv=None) -> int:
    return main("download", argv)


def convert_main(argv=None) -> int:
    return main("convert", argv)


def report_main(argv=None) -> int:
    return main("report", argv)


def preprocess_main(argv=None) -> int:
    return main("preprocess", argv)


def pretrain_main(argv=None) -> int:
    return main("pretrain", argv)


def finetune_main(argv=None) -> int:
    return main("finetune", argv)


def evaluate_main(argv=None) -> int:
    return main("evaluate", argv)


def predict_main(argv=None) -> int:
    return main("predict", argv)


def sweep_main(argv=None) -> int:
    return main("sweep", argv)


def doctor_main(argv=None) -> int:
    return main("doctor", argv)


def bench_main(argv=None) -> int:
    return main("bench", argv)


def quickstart_main(argv=None) -> int:
    return main("quickstart", argv)
