"""`make bench`: runs every benchmark script in bench/ (bench_*.py) in turn, each comparing mixq
against a peer (onnxruntime, TensorFlow Lite) in the same run and printing ratios."""
import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).resolve().parent
scripts = sorted(here.glob("bench_*.py"))
failed = []
for script in scripts:
    print(f"\n=== {script.name} ===", flush=True)
    if subprocess.run([sys.executable, str(script)], cwd=here.parent).returncode != 0:
        failed.append(script.name)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")
