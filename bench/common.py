"Helpers shared by the benchmark scripts: threads, machine info, timing, tables"
import os, platform, statistics, time
import torch

def add_common_args(parser):
    "Add `--quick` and `--threads` to an argparse parser; returns it"
    parser.add_argument('--quick', action='store_true', help='small shapes and few repeats: checks the script runs, measures nothing')
    parser.add_argument('--threads', type=int, default=None, help='torch/OpenMP threads (default: 1 with --quick, else all cores)')
    return parser

def set_threads(threads:int|None, quick:bool) -> int:
    "Use `threads` intra-op threads (1 for a quick run, all cores otherwise), also in the environment of child processes"
    n = threads or (1 if quick else os.cpu_count())
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[var] = str(n)
    torch.set_num_threads(n)
    return n

def _cpu_model() -> str:
    "The CPU's model name"
    try:
        with open('/proc/cpuinfo') as f: return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown CPU'

def print_machine(title:str, quick:bool):
    "Print what the numbers below depend on: CPU, cores, threads, load, versions"
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    print(f'# {title}{" (QUICK: small shapes, not a measurement)" if quick else ""}')
    print(f'cpu: {_cpu_model()}; cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}); '
          f'torch threads: {torch.get_num_threads()}; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}; load average: {load}')
    print(f'python {platform.python_version()}; torch {torch.__version__}\n')

def start(parser, title:str):
    "Parse the arguments, set the threads, print the machine and seed torch: the opening of every benchmark's `main`"
    args = parser.parse_args()
    set_threads(args.threads, args.quick)
    print_machine(title, args.quick)
    torch.manual_seed(0)
    return args

def median_seconds(fns:dict, repeats:int, warmup:int=1, on_result=None) -> dict:
    "Median wall time of each function in `fns`, called in turn within each repeat (fair under drifting load)"
    for _ in range(warmup):
        for fn in fns.values(): fn()
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            # checked outside the timed region, once, and dropped before the next function runs
            if on_result and i == repeats - 1: on_result(name, result)
            del result
    return {name: statistics.median(t) for name, t in times.items()}

def print_table(head:list, rows:list):
    "Print `rows` under `head`, the first column left-aligned, the others right-aligned"
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    for row in [head, ['-' * w for w in widths], *rows]:
        print('  '.join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    print()
