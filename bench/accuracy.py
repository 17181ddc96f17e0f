"""End-to-end accuracy through the CLI on scenes the team does not tune to.

Settings (comma-separated in --settings):
  easy, hard  synthetic scenes whose parameters are DRAWN AT RANDOM per seed
              (geodet.testing.synthetic.draw_params: object sizes, class shares with
              one class at 10-15 % of objects in hard, car orientation mix,
              contrast, haze, blur, noise, density). Run i trains on the draw
              of seed S + 2i and tests on the draw of seed S + 2i + 1, a
              different scene with different parameters (S = --seed-start,
              default 100: the held-out seeds; tune on seeds below 100 only).
  real        a real 10 cm RGB scene with hand-drawn tree crowns (--real-data):
              train on the west two thirds, test on the east third, and on
              the other sites (--real-data/sites, never trained on).
  real-sites  the cross-site benchmark: train on the whole real scene, test on
              each other site (Florida, California); AP50 per site and their
              mean, with the east-third figure of the `real` run beside them
              (two trainings).
  real-cv     the same scene in three vertical strips: train on two, test on
              the third, for each strip.
  easy-fixed, hard-fixed
              the former fixed pairs (seed 1 train, seed 2 test, fixed
              parameters): a development aid, not a result.
For each run: `geodet train --max-time M`, `geodet detect`, `geodet evaluate
--json`. Prints per run the setting, seeds or fold, per-class AP50, mAP50,
P/R and wall times; then per setting the mean and the worst AP50 per class
over seeds or folds.

    python bench/accuracy.py [--minutes 15] [--size 2048] [--settings easy,hard,real,real-cv]
                             [--seeds 3] [--seed-start 100] [--json out.json] [--device auto]
    python bench/accuracy.py real-sites          # the cross-site benchmark (settings may be given as arguments)
    python bench/accuracy.py real-sites --paired-detect=--tta   # each model also scored with test-time flips
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import real_data
from scenes import HELD_OUT_SEED, write_drawn_scene, write_pair

SYNTHETIC_CLASS_FIELD = "class"
DRAWN = ("easy", "hard")
FIXED = {"easy-fixed": "easy", "hard-fixed": "hard"}
REAL = {"real": "holdout", "real-cv": "cv"}
SITES = "real-sites"
PIXEL_SIZE_M = 0.5


class StepFailed(RuntimeError):
    pass


def run(cmd) -> tuple:
    """Run a CLI command; ``(stdout, wall seconds)``; StepFailed with its output on failure."""
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout, time.time() - t0


# --------------------------------------------------------------------------- the jobs of a setting
def jobs_for(setting: str, args, work: Path) -> list:
    """The runs of one setting: dicts with train tifs, labels, test tif, labels, class field, names."""
    folder = work / setting
    if setting in DRAWN:
        jobs = []
        for i in range(args.seeds):
            a, b = args.seed_start + 2 * i, args.seed_start + 2 * i + 1
            train = write_drawn_scene(folder, size=args.size, setting=setting, seed=a, pixel_size=PIXEL_SIZE_M,
                                      name=f"seed{a}")
            test = write_drawn_scene(folder, size=args.size, setting=setting, seed=b, pixel_size=PIXEL_SIZE_M,
                                     name=f"seed{b}")
            jobs.append({
                "id": f"seeds {a}->{b}", "train": [train["tif"]], "train_labels": train["labels"],
                "test": test["tif"], "test_labels": test["labels"], "class_field": SYNTHETIC_CLASS_FIELD,
                "train_seed": a, "test_seed": b, "train_params": train["params"], "test_params": test["params"],
                "train_counts": train["counts"], "test_counts": test["counts"],
            })
        return jobs
    if setting in FIXED:
        pair = write_pair(folder, size=args.size, difficulty=FIXED[setting], pixel_size=PIXEL_SIZE_M)
        return [{"id": "seeds 1->2 (fixed)", "train": [pair["train"][0]], "train_labels": pair["train"][1],
                 "test": pair["test"][0], "test_labels": pair["test"][1], "class_field": SYNTHETIC_CLASS_FIELD,
                 "train_seed": 1, "test_seed": 2}]
    if setting == SITES:  # the whole scene for the sites, and the holdout run for the east third
        whole, sites = real_data.whole_scene(args.real_data), real_data.site_tests(args.real_data)
        return jobs_for("real", args, work) + [{"id": f"whole scene ({whole['n_train']} crowns)", "train": whole["train"],
                 "train_labels": whole["train_labels"], "test": sites[0]["tif"], "test_labels": sites[0]["labels"],
                 "test_name": sites[0]["name"], "more_tests": sites[1:], "class_field": whole["class_field"],
                 "train_seed": 0, "fold": "whole"}]
    if setting in REAL:
        folds = real_data.write_layout(args.real_data, folder, REAL[setting])
        if setting == "real-cv" and args.folds is not None:
            folds = [f for f in folds if f["name"] in {f"fold{k}" for k in args.folds}]
        return [{"id": f"{f['name']} (train {f['n_train']}, test {f['n_test']} crowns)", "train": f["train"],
                 "train_labels": f["train_labels"], "test": f["test"], "test_labels": f["test_labels"],
                 "class_field": f["class_field"], "train_seed": 0, "fold": f["name"], "test_name": "east third"
                 if setting == "real" else f["name"],
                 "more_tests": real_data.site_tests(args.real_data) if setting == "real" else []} for f in folds]
    raise SystemExit(f"unknown setting {setting!r}: use {', '.join(list(DRAWN) + list(REAL) + [SITES] + list(FIXED))}")


def run_job(job: dict, setting: str, anchors: str, args, work: Path) -> dict:
    """Train, detect and evaluate one job through the CLI; the run's record."""
    stem = work / f"{setting}_{job.get('fold', job['train_seed'])}_{anchors}"
    model = f"{stem}.pt"
    cmd = [args.geodet, "train"]
    for tif in job["train"]:
        cmd += ["--imagery", tif]
    cmd += ["--labels", job["train_labels"], "--class-field", job["class_field"], "-o", model,
            "--max-time", str(args.minutes), "--anchors", anchors, "--device", args.device,
            "--seed", str(job["train_seed"]), "--quiet", "--overwrite"] + list(args.train_arg)
    _, train_s = run(cmd)
    rep, detect_s, eval_s = score(model, job["test"], job["test_labels"], job["class_field"], f"{stem}.gpkg", args)
    record = {k: v for k, v in job.items() if k not in ("train", "test", "train_labels", "test_labels", "more_tests")}
    record.update(setting=setting, anchors=anchors, train_s=train_s, detect_s=detect_s, eval_s=eval_s,
                  classes=rep["classes"], overall=rep["overall"], excluded=rep.get("excluded"))
    tests = {job.get("test_name", "test"): rep["overall"]["ap50"]}
    for extra in job.get("more_tests", []):
        rep_i, _, _ = score(model, extra["tif"], extra["labels"], job["class_field"], f"{stem}_{extra['name']}.gpkg", args)
        tests[extra["name"]] = rep_i["overall"]["ap50"]
    record["tests"] = tests
    if args.paired_detect:
        record["paired"] = paired_scores(model, job, stem, args)
    return record


def paired_scores(model: str, job: dict, stem: Path, args) -> dict:
    """``{variant: {test name: AP50}}``: each ``--paired-detect`` variant scored on every test scene
    with the same model as the plain detection, so that a detection setting is compared without the
    spread between training runs."""
    scenes = [(job.get("test_name", "test"), job["test"], job["test_labels"])]
    scenes += [(e["name"], e["tif"], e["labels"]) for e in job.get("more_tests", [])]
    out = {}
    for k, variant in enumerate(args.paired_detect):
        out[variant] = {}
        for name, tif, labels in scenes:
            tag = name.replace(" ", "_")
            rep, _, _ = score(model, tif, labels, job["class_field"], f"{stem}_{tag}_paired{k}.gpkg", args,
                              extra=shlex.split(variant))
            out[variant][name] = rep["overall"]["ap50"]
    return out


def score(model: str, tif: str, labels: str, class_field: str, dets: str, args, extra=()) -> tuple:
    """``geodet detect`` (with the ``--detect-arg`` arguments, then ``extra``) and ``geodet evaluate
    --json`` of one test scene: (report, detect s, evaluate s)."""
    _, detect_s = run([args.geodet, "detect", tif, "-m", model, "-o", dets, "--score-threshold", "0.05",
                       "--device", args.device, "--quiet", "--overwrite"] + list(args.detect_arg) + list(extra))
    out, eval_s = run([args.geodet, "evaluate", dets, labels, "--imagery", tif, "--class-field", class_field, "--json"])
    return json.loads(out), detect_s, eval_s


# --------------------------------------------------------------------------- reporting
def format_run(r: dict) -> str:
    if "error" in r:
        return f"{r['setting']:8} {r['id']:24} anchors={r['anchors']}: FAILED ({r['error'].splitlines()[0]})"
    per_class = ", ".join(f"{c} {m['ap50']:.3f}" for c, m in sorted(r["classes"].items()))
    o = r["overall"]
    line = (f"{r['setting']:8} {r['id']:24} anchors={r['anchors']} | AP50 {per_class} | mAP50 {o['ap50']:.3f} "
            f"AP50:95 {o['ap50_95']:.3f} P {o['precision']:.3f} R {o['recall']:.3f} | train {r['train_s']:.0f} s, "
            f"detect {r['detect_s']:.1f} s, evaluate {r['eval_s']:.1f} s")
    if len(r.get("tests", {})) > 1:
        sites = {k: v for k, v in r["tests"].items() if k != "east third"}
        line += "\n    AP50 per test scene: " + ", ".join(f"{k} {v:.3f}" for k, v in r["tests"].items())
        line += f"; other sites' mean {sum(sites.values()) / len(sites):.3f}"
    for variant, tests in r.get("paired", {}).items():
        line += f"\n    same model, detect {variant}: " + ", ".join(f"{k} {v:.3f}" for k, v in tests.items())
    return line


def summarise(runs: list) -> list:
    """Per (setting, anchors): mean and worst AP50 per class and of mAP50 over seeds or folds."""
    out = []
    for key in dict.fromkeys((r["setting"], r["anchors"]) for r in runs):
        group = [r for r in runs if (r["setting"], r["anchors"]) == key]
        done = [r for r in group if "error" not in r]
        entry = {"setting": key[0], "anchors": key[1], "runs": len(group), "failed": len(group) - len(done),
                 "classes": {}}
        for name in sorted({c for r in done for c in r["classes"]}):
            values = [(r["classes"][name]["ap50"], r["id"]) for r in done if name in r["classes"]]
            worst = min(values)
            entry["classes"][name] = {"mean_ap50": sum(v for v, _ in values) / len(values), "worst_ap50": worst[0],
                                      "worst_run": worst[1], "n": len(values)}
        if done:
            maps = [(r["overall"]["ap50"], r["id"]) for r in done]
            entry["map50"] = {"mean": sum(v for v, _ in maps) / len(maps), "worst": min(maps)[0],
                              "worst_run": min(maps)[1]}
        out.append(entry)
    return out


def sites_summary(runs: list) -> list:
    """The cross-site lines: AP50 per other site and their mean for the whole-scene model, and
    the east third (of the west-two-thirds model) beside them."""
    lines = []
    for r in runs:
        if r.get("setting") != SITES or "error" in r or r.get("fold") != "whole":
            continue
        sites = r["tests"]
        east = [x["tests"]["east third"] for x in runs if x.get("setting") == SITES and "error" not in x
                and "east third" in x.get("tests", {})]
        lines.append("cross-site (trained on the whole scene): " + ", ".join(f"{k} {v:.3f}" for k, v in sites.items())
                     + f", mean {sum(sites.values()) / len(sites):.3f}"
                     + (f" | east third (trained on the west two thirds) {east[0]:.3f}" if east else ""))
    return lines


def format_summary(s: dict) -> str:
    head = f"{s['setting']:8} anchors={s['anchors']} over {s['runs'] - s['failed']} run(s)"
    if s["failed"]:
        head += f" ({s['failed']} failed)"
    if "map50" not in s:
        return head + ": no results"
    per_class = ", ".join(f"{c} mean {m['mean_ap50']:.3f} worst {m['worst_ap50']:.3f}" for c, m in s["classes"].items())
    m = s["map50"]
    return f"{head} | AP50 {per_class} | mAP50 mean {m['mean']:.3f} worst {m['worst']:.3f}"


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per run (geodet train --max-time)")
    ap.add_argument("--size", type=int, default=2048, help="synthetic scene side in px (0.5 m pixels)")
    ap.add_argument("setting", nargs="*", help="settings to run (instead of --settings)")
    ap.add_argument("--settings", default="easy,hard,real,real-cv")
    ap.add_argument("--seeds", type=int, default=3, help="train/test draws per synthetic setting")
    ap.add_argument("--seed-start", type=int, default=HELD_OUT_SEED,
                    help=f"first seed; reported figures use >= {HELD_OUT_SEED}, tuning only seeds below")
    ap.add_argument("--anchors", default="auto", help="anchor modes to compare, comma-separated (auto, coco)")
    ap.add_argument("--skip-coco", action="store_true", help="same as --anchors auto (the default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--real-data", type=Path, default=real_data.DEFAULT_DATA_DIR,
                    help="folder with scene.tif and crowns.gpkg (class field 'kind')")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="write runs and summary here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep scenes, models and detections here")
    ap.add_argument("--geodet", default="geodet", help="the geodet executable")
    ap.add_argument("--train-arg", action="append", default=[],
                    help="one more argument for every geodet train, repeatable (A/B runs: --train-arg=--config --train-arg=ab.yaml)")
    ap.add_argument("--detect-arg", action="append", default=[],
                    help="one more argument for every geodet detect, repeatable (--detect-arg=--normalisation "
                         "--detect-arg=scene)")
    ap.add_argument("--paired-detect", action="append", default=[], metavar="ARGS",
                    help="also score every model with these geodet detect arguments (one quoted string, "
                         "repeatable), beside the plain detection: a paired A/B of a detection setting "
                         "(--paired-detect=--tta)")
    ap.add_argument("--folds", type=lambda v: [int(k) for k in v.split(",")], default=None,
                    help="real-cv folds to run, e.g. 0,1 (tuning: fold 2's test strip is the east third that "
                         "the real setting reports; default all)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if args.seed_start < HELD_OUT_SEED < args.seed_start + 2 * args.seeds:
        ap.error(f"tuning seeds must stay below {HELD_OUT_SEED}: --seed-start {args.seed_start} with --seeds "
                 f"{args.seeds} reaches seed {args.seed_start + 2 * args.seeds - 1}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    anchors_modes = ["auto"] if args.skip_coco else args.anchors.split(",")
    settings = [s.strip() for s in (",".join(args.setting) or args.settings).split(",") if s.strip()]
    if args.seed_start < HELD_OUT_SEED and any(s in DRAWN for s in settings):
        print(f"note: seeds {args.seed_start}.. are tuning seeds, not held out: do not report these figures")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for setting in settings:
            for job in jobs_for(setting, args, work):
                for anchors in anchors_modes:
                    try:
                        record = run_job(job, setting, anchors, args, work)
                    except StepFailed as err:
                        record = {"setting": setting, "anchors": anchors, "id": job["id"], "error": str(err)}
                        print(err, file=sys.stderr)
                    runs.append(record)
                    print(format_run(record), flush=True)
    summary = summarise(runs)
    print("\nsummary (mean and worst over seeds / folds)")
    for s in summary:
        print(format_summary(s))
    for line in sites_summary(runs):
        print(line)
    if args.json_out:
        report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "runs": runs, "summary": summary}
        Path(args.json_out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
