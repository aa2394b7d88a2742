"""Pack what gpu_suite.py needs on a lent GPU machine into the ignored folder ``.gpu/``, and check
that it travels.

That machine has torch and transformers 5 but not `adapters` (which needs transformers 4.57),
Ray, MLflow or Optuna, cannot download, and takes the working tree plus carried paths up to
64 MiB. So the bundle holds: the base model's files, its weights stored in fp16 (loaded into fp32
there); the wheels of the packages the trial side imports that the machine lacks or holds at
another version (the versions installed here, so both sides run the same code); and the tasks'
local train/dev files (``../shared`` does not travel). Model and data files are gzipped and the
device command unpacks them first. It prints the total that would travel, fails (exit 2) above
the limit, and prints the device command.

    AUTOPEFT_DATA_DIR=../shared/data .venv/bin/python benchmarks/gpu_bundle.py --tasks mr,mpqa
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20  # what the device tool carries, working tree included
# Not on the GPU machine, or there at a version `adapters` cannot use (transformers 5, hub 1.x,
# tokenizers 0.23 which transformers 4.57 refuses at import); colorlog is what optuna imports.
WHEELS = ("transformers", "adapters", "huggingface_hub", "tokenizers", "optuna", "colorlog")
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def wheels(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(out), *pins]
    for p in PLATFORMS:
        cmd[cmd.index("-d"):cmd.index("-d")] = ["--platform", p]
    subprocess.run(cmd, check=True)


def model(out: Path) -> None:
    """The embedded model's files, its weights as fp16 (half the bytes; the loader upcasts), all
    gzipped: that saves another 3.6 MB, which seven tasks' data need to fit."""
    from safetensors.torch import load_file, save_file

    from autopeft.models import resolve_model

    src = Path(resolve_model(common.MODEL))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half().contiguous() for k, v in weights.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    for name in MODEL_FILES:
        shutil.copy(src / name, out / name)
    for path in list(out.iterdir()):
        _gzip(path, path.with_name(path.name + ".gz"))
        path.unlink()


def _gzip(src: Path, dst: Path) -> None:
    import gzip

    with open(src, "rb") as f, gzip.open(dst, "wb") as g:
        shutil.copyfileobj(f, g)


def data(tasks: list[str], data_dir: Path, out: Path) -> None:
    """Each task's train/dev files, gzipped (SST-2's train file alone is 3.7 MB of the 64 MiB);
    the device command unpacks them in place before anything reads them."""
    from autopeft.tasks import load_task

    for name in tasks:
        local = load_task(name).local
        if local is None:
            raise SystemExit(f"task {name!r} has no local files to carry")
        for split in ("train", "dev"):
            rel = Path(local.path_for(split))
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            _gzip(data_dir / rel, out / f"{rel}.gz")


def travelling_bytes(bundle: Path) -> int:
    """The working tree the tool sends (tracked and untracked-not-ignored files) plus the bundle."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    tree = sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())
    return tree + sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mr", help="tasks whose train/dev files travel (comma-separated)")
    ap.add_argument("--data-dir", default=os.environ.get("AUTOPEFT_DATA_DIR"))
    ap.add_argument("--tag", default="gpu", help="gpu_suite.py --tag: the prefix of the pass's CSVs, which travel "
                                                 "so the pass resumes")
    ap.add_argument("--baselines-tag", default="gpu", help="gpu_suite.py --baselines-tag")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu", help="the bundle (ignore it in .git/info/exclude)")
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("give --data-dir or AUTOPEFT_DATA_DIR (the data folder, e.g. ../shared/data)")
    # The folder exists before git is asked: a directory-only pattern such as /.gpu/ matches no
    # path that is absent, so a first run would be refused under the very line it suggests.
    args.out.mkdir(parents=True, exist_ok=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(args.out)], cwd=ROOT).returncode == 0
    if not ignored:
        ap.error(f"{args.out} is not ignored by git, so it would travel twice: add /{args.out.name}/ to "
                 f"$(git rev-parse --git-common-dir)/info/exclude")
    shutil.rmtree(args.out / "data", ignore_errors=True)
    wheels(args.out / "whl")
    model(args.out / "model")
    data(args.tasks.split(","), Path(args.data_dir).resolve(), args.out / "data")
    size = travelling_bytes(args.out)
    print(f"travels: {size / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} (carry [\"{args.out.name}\"])")
    if size > LIMIT:
        print(f"over the limit: carry fewer tasks (--tasks) or remove older wheels from {args.out / 'whl'}")
        sys.exit(2)
    b = args.out.name
    passes = args.tag if args.tag == args.baselines_tag else f"{{{args.tag},{args.baselines_tag}}}"
    # The committed <tag>_*.csv go into $OUT first: gpu_suite.py resumes from what is there, so the
    # tasks and runs an earlier GPU finished are skipped, and the CSVs come back whole.
    print("device command (one call; --deadline leaves the call time to finish the runs in flight):\n"
          f"  mkdir -p $OUT/suite && cp benchmarks/results/suite/{passes}_*.csv $OUT/suite/ 2>/dev/null; "
          f"gunzip -rf {b}/data {b}/model && "
          f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site {b}/whl/*.whl && "
          f"export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 AUTOPEFT_BENCH_MODEL=$PWD/{b}/model "
          f"AUTOPEFT_BENCH_DEVICE=cuda AUTOPEFT_BENCH_RESULTS=$OUT && "
          f"python3 benchmarks/gpu_suite.py --data-dir {b}/data --tasks {args.tasks} --train-examples 8192 "
          f"--search-train-examples 8192 --trials 20 --workers 12 --deadline 460 --tag {args.tag} "
          f"--baselines-tag {args.baselines_tag} "
          f"2>&1 | tee $OUT/suite/{args.tag}_new.log")


if __name__ == "__main__":
    main()
