"""The long decoder fuzz run (the CI test, ``tests/test_decoder_fuzz.py``, runs ~30 s of the same): mutated files of
every format Pillow writes here through ``decode_image``, counted by outcome (decoded, 413, 422, anything else).

    python benchmarks/decoder_fuzz.py [--seconds 600] [--seed 1]

Prints the inputs tried and the outcome counts as a markdown row for docs/security.md, the first failures (an outcome
that is neither a decoded image nor a 4xx with a short message, or a decode over ``--per-input`` seconds) and the
inputs that took over a second; exits 1 when there is a failure.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-megapixels", type=float, default=64.0)
    parser.add_argument("--per-input", type=float, default=20.0, help="seconds one input may take (then: a failure)")
    parser.add_argument("--save-slow", metavar="DIR", help="write the 20 slowest inputs here")
    args = parser.parse_args()

    from ml_backend.media.fetcher import decode_image
    from testkit.decoder_fuzz import run, seeds

    def decode(data: bytes) -> object:  # each input gets at most --per-input seconds (SIGALRM stops Pillow's loop)
        signal.setitimer(signal.ITIMER_REAL, args.per_input)
        try:
            return decode_image(data, max_pixels=int(args.max_megapixels * 1e6))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def too_slow(signum, frame):
        raise TimeoutError(f"decoding took over {args.per_input:g} s")

    signal.signal(signal.SIGALRM, too_slow)
    slow: list[tuple[float, str, bytes]] = []
    t0 = time.perf_counter()
    tried, outcomes, failures = run(decode, args.seed, None, args.seconds, slow)
    elapsed = time.perf_counter() - t0
    if args.save_slow:
        Path(args.save_slow).mkdir(parents=True, exist_ok=True)
        for i, (_, name, data) in enumerate(sorted(slow, key=lambda s: -s[0])[:20]):
            (Path(args.save_slow) / f"{i:02d}-{name}.bin").write_bytes(data)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    print(f"CPU: {cpu_name()}; {len(seeds())} seed files; seed {args.seed}; {elapsed:.0f} s")
    print("| inputs tried | outcomes | failures |")
    print("|---|---|---|")
    print(f"| {tried} | {counts} | {len(failures)} |")
    for name, what in failures[:20]:
        print(f"  {name}: {what}")
    slowest = ", ".join(f"{name} {t:.1f} s" for t, name, _ in sorted(slow, key=lambda s: -s[0])[:8])
    print(f"inputs over 1 s: {len(slow)}; slowest: {slowest or '-'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
