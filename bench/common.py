"Helpers shared by the benchmark scripts: threads, machine info, timing, tables"
import json, os, platform, statistics, subprocess, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

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

def timed(cmd:list, threads:int) -> tuple:
    "`(wall seconds, peak RSS MB of the largest process, stdout)` of `cmd` under /usr/bin/time"
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads), 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    start = time.perf_counter()
    run = subprocess.run(['/usr/bin/time', '-f', 'PEAK_KB %M', *map(str, cmd)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if run.returncode: sys.exit(f'failed: {" ".join(map(str, cmd))}\n{run.stderr[-3000:]}')
    peak = int(next(l for l in run.stderr.splitlines() if l.startswith('PEAK_KB')).split()[1]) / 1024
    return wall, peak, run.stdout

def write_shards(directory, state:dict, make, shard_mb:int) -> int:
    "Write the tensors `make(t)` of each entry of the (meta) `state` into shards of about `shard_mb` MB with their index, one shard in memory at a time; their bytes"
    from fasterai_fc.misc.outofcore import write_safetensors
    shards, current, size = [], {}, 0
    for name, t in state.items():
        current[name] = make(t)
        size += current[name].nbytes
        if size >= shard_mb * 2**20: shards.append(current); current, size = {}, 0
    if current: shards.append(current)
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards):
        name = f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
        write_safetensors(tensors, directory/name)
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.nbytes for t in tensors.values())
    (directory/'model.safetensors.index.json').write_text(json.dumps({'metadata': {'total_size': total}, 'weight_map': weight_map}))
    return total

def tokenized(tokenizer, sentences:list, batch_size:int=32) -> list:
    "`sentences` tokenized in padded batches of `batch_size`, as dicts of keyword arguments of a BERT model"
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors='pt'))
            for i in range(0, len(sentences), batch_size)]

@torch.inference_mode()
def embeddings(model:nn.Module, batches:list) -> torch.Tensor:
    "Mean-pooled (over the attention mask), L2-normalized last hidden states of every sentence in `batches`"
    pooled = []
    for batch in batches:
        hidden, mask = model.eval()(**batch).last_hidden_state, batch['attention_mask'].unsqueeze(-1).to(torch.float32)
        pooled.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(pooled)

def nearest_neighbours(embedded:torch.Tensor) -> torch.Tensor:
    "Index of each sentence's most similar other sentence (cosine)"
    similarity = embedded @ embedded.T
    return similarity.fill_diagonal_(-2).argmax(1)
