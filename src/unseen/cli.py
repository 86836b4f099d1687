"""Command line: argument wiring only; everything it does is a library call (``unseen.runs`` and friends)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from unseen import __version__
from unseen.config import ConfigError
from unseen.io import DataFormatError, UnsafeFileError

USER_ERRORS = (
    ConfigError,
    DataFormatError,
    UnsafeFileError,
    FileNotFoundError,
    FileExistsError,
    KeyError,
    ValueError,
    NotImplementedError,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unseen", description="Zero-shot recognition: attribute, multi-label, compositional."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    p.add_argument("--version", action="version", version=f"unseen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train + evaluate every method on the embedded benchmark (no download)")
    d.add_argument("setting", nargs="?", default="attribute", help="attribute | multilabel | compositional")
    d.add_argument("--output-dir", default="runs")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every demo method's config")
    d.add_argument("--seeds", help="training seeds, e.g. 0,1,2: every method once per seed, then mean ± std")

    t = sub.add_parser("train", help="train and evaluate one run from a config")
    t.add_argument("config", nargs="?", help="YAML path or packaged name, e.g. attribute/mgmrn_cub")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=5")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed run from its last checkpoint (a finished run with an unchanged config is left as it is)",
    )
    t.add_argument(
        "--seeds", help="a seed sweep, e.g. 0,1,2 or 0-4: one run per seed, then a mean ± std report"
    )

    rp = sub.add_parser("report", help="compare finished runs: one table, seeds grouped into mean ± std")
    rp.add_argument("runs", nargs="+", metavar="RUN_OR_GLOB", help="run folders, folders of runs, or globs")
    rp.add_argument("--output", default="report", help="write OUTPUT.csv and OUTPUT.md (default: ./report)")

    ab = sub.add_parser(
        "ablate",
        help="a method's ablations on the embedded benchmark: variants x worlds x seeds, mean ± std per variant",
    )
    ab.add_argument("setting", help="attribute | multilabel | compositional")
    ab.add_argument(
        "overrides", nargs="*", metavar="key=value", help="applied to every variant, e.g. train.epochs=2"
    )
    ab.add_argument("--method", help="whose ablation spec to run (default: the setting's only one)")
    ab.add_argument("--variants", help="comma-separated variant names (default: all, in the spec's order)")
    ab.add_argument("--seeds", default="0,1,2", help="training seeds, e.g. 0,1,2 or 0-4 (default: 0,1,2)")
    ab.add_argument("--worlds", help="world seeds (data.world.seed), e.g. 0,1 (default: the demo's world)")
    ab.add_argument(
        "--output",
        help="folder of the runs and ablation.md / .csv (default: runs/ablate-SETTING-METHOD); run the same "
        "command again to continue a stopped ablation",
    )

    e = sub.add_parser("eval", help="recompute a finished run's test metrics")
    e.add_argument("run_dir")

    pr = sub.add_parser("predict", help="top-k classes for images, from a trained run")
    pr.add_argument("checkpoint", help="run folder (or a checkpoint file inside it)")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--classes", default="all", help="all | seen | unseen | comma-separated class names")
    pr.add_argument("--topk", type=int, default=5)

    da = sub.add_parser("data", help="dataset utilities")
    dsub = da.add_subparsers(dest="data_command", required=True)
    ck = dsub.add_parser("check", help="validate a user's copy of a dataset and report what is wrong")
    ck.add_argument("format", choices=["xlsa17", "nus_wide", "open_images", "czsl"])
    ck.add_argument(
        "--root",
        required=True,
        help="xlsa17: folder with att_splits.mat; nus_wide: TagList1k.txt + "
        "Concepts81.txt; open_images: the 2018_04 label folder; czsl: the dataset folder (split + images)",
    )
    ck.add_argument("--image-root", default=None, help="xlsa17 only")
    ck.add_argument("--image-list", default=None, help="xlsa17 only")
    ck.add_argument("--w2v", default=None, help="xlsa17 only")
    from unseen.make_data import add_make_parser

    add_make_parser(dsub)

    ex = sub.add_parser(
        "extract", help="region features of an image folder into a BiAM-layout h5 (+ provenance)"
    )
    ex.add_argument("image_root")
    ex.add_argument("output", help="the .h5 file to write (its provenance goes to <output>.json)")
    ex.add_argument(
        "--list",
        dest="image_list",
        help="text file, one image path per line relative to IMAGE_ROOT "
        "(default: every image under it, sorted)",
    )
    ex.add_argument("--labels", help=".npy (N, L) in {-1,0,1}, one row per image, stored as <name>-labels")
    ex.add_argument(
        "--unseen-labels",
        help=".npy (N, U): write the NUS-WIDE test layout (labels = [seen|unseen], labels_81 = unseen)",
    )
    ex.add_argument(
        "--backbone", default="vgg19", help="vgg19 (conv5_4, default) | vit | vit:<timm model> | tiny"
    )
    ex.add_argument(
        "--weights", help="local weights file or hf-hub:<repo> from the local cache (no download)"
    )
    ex.add_argument(
        "--allow-random-init",
        action="store_true",
        help="extract with a randomly initialised backbone (tests only)",
    )
    ex.add_argument("--image-size", type=int, default=224)
    ex.add_argument("--batch-size", type=int, default=32)
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    sub.add_parser("list", help="registered models and datasets, packaged configs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse leaves `key=value` items that come after an option (`demo compositional --output-dir x seed=1`)
    # unparsed: they are overrides too. Anything else is still an error.
    if (
        extra
        and getattr(args, "overrides", None) is not None
        and all("=" in x and not x.startswith("-") for x in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # our messages at INFO; other libraries' (open_clip logs model construction at INFO) at WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("unseen").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return _dispatch(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"unseen {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except (
        BrokenPipeError
    ):  # the reader left (`unseen report ... | head`): stop quietly, as other CLI tools do
        os.dup2(
            os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno()
        )  # no second error when Python flushes stdout
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


def _dispatch(args: argparse.Namespace) -> int:
    from unseen import runs

    if args.command == "demo":
        seeds = runs.parse_seeds(args.seeds) if args.seeds else None
        print(runs.demo(args.setting, args.output_dir, args.overrides, seeds))
    elif args.command == "train":
        if not args.config and not args.resume:
            raise ConfigError("give a config (e.g. attribute/demo_mgmrn) or --resume RUN_DIR")
        if args.seeds:
            if args.resume:
                raise ConfigError("--seeds starts new runs; it cannot be combined with --resume")
            sweep, rep = runs.train_seeds(args.config, args.overrides, runs.parse_seeds(args.seeds))
            print(rep["text"])
            print(f"runs and report.csv / report.md in {sweep}")
            return 0
        res = runs.train(args.config, args.overrides, args.resume)
        print(
            json.dumps(
                {"run_dir": res["run_dir"], "metrics": res["metrics"], "selection": res["selection"]},
                indent=2,
            )
        )
    elif args.command == "report":
        from unseen import report

        rep = report.compare_runs(args.runs)
        print(rep["text"])
        for path in report.write_report(rep, args.output):
            print(f"wrote {path}")
    elif args.command == "ablate":
        from unseen import ablate

        res = ablate.ablate(
            args.setting,
            method=args.method,
            variants=ablate.parse_names(args.variants) if args.variants is not None else None,
            seeds=runs.parse_seeds(args.seeds),
            worlds=_world_seeds(args.worlds) if args.worlds is not None else None,
            output=args.output,
            overrides=args.overrides,
        )
        print(res["text"])
        print(
            f"runs and ablation.md / ablation.csv in {res['output']}   {res['trained']} run(s) trained, "
            f"{res['reused']} reused, total {res['elapsed_s']:.0f}s"
        )
    elif args.command == "eval":
        print(json.dumps(runs.evaluate_run(args.run_dir), indent=2))
    elif args.command == "predict":
        for item in runs.predict(args.checkpoint, args.images, args.classes, args.topk):
            print(item["image"])
            for t in item["top"]:
                print(f"  {t['score']:8.3f}  {t['class']}{'' if t['seen'] else '  (unseen)'}")
    elif args.command == "data" and args.data_command == "make":
        from unseen.make_data import run_make

        return run_make(args)
    elif args.command == "data":
        if args.format == "xlsa17":
            from unseen.attribute.data import check_xlsa17

            lines = check_xlsa17(
                args.root, image_root=args.image_root, image_list=args.image_list, w2v=args.w2v
            )
        elif args.format == "czsl":
            from unseen.compositional.data import check_czsl

            lines = check_czsl(args.root)
        else:
            from unseen.multilabel.data import check_multilabel

            lines = check_multilabel(args.format, args.root)
        for line in lines:
            print(line)
        errors = [line for line in lines if line.startswith("ERROR")]
        if errors:  # the report is printed in full; the exit status says it failed
            print(f"FAILED: {len(errors)} problem(s) above", file=sys.stderr)
            return 2
        print("OK")
    elif args.command == "extract":
        from unseen.multilabel.extract import extract_h5, extract_items, read_sidecar

        if not args.weights and not args.allow_random_init:
            raise ConfigError(
                f"--weights is not set: features of a randomly initialised {args.backbone} would be extracted; "
                "set it, or --allow-random-init"
            )
        items = extract_items(args.image_root, args.image_list, args.labels, args.unseen_labels)
        out = extract_h5(
            args.image_root,
            items,
            args.output,
            backbone=args.backbone,
            weights=args.weights,
            image_size=args.image_size,
            batch_size=args.batch_size,
            device=args.device,
            overwrite=args.overwrite,
        )
        meta = read_sidecar(out)
        print(
            f"{out}: {meta['n_images']} images, features {meta['feature_shape']} ({meta['backbone']}, "
            f"{meta['layer']}); provenance in {out}.json"
        )
    elif args.command == "list":
        from unseen.registry import DATASETS, MODELS, list_settings

        list_settings()  # loads the settings
        for title, table in (("models", MODELS), ("datasets", DATASETS)):
            print(f"{title}:")
            for (setting, n), e in sorted(table.items()):
                print(f"  {setting:13s} {n:14s} {e.description}")
        print("configs (unseen train NAME):")
        for name in runs.packaged_configs():
            print(f"  {name}")
        from unseen.ablate import list_specs

        print("ablations (unseen ablate SETTING --method METHOD):")
        for name in list_specs():
            print(f"  {name}")
    return 0


def _world_seeds(text: str) -> list[int]:
    """``--worlds`` reads like ``--seeds``; its errors name the option."""
    from unseen.runs import parse_seeds

    try:
        return parse_seeds(text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--seeds", "--worlds", 1)) from None


if __name__ == "__main__":
    sys.exit(main())
