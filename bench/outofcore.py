"Out-of-core decomposition of a sharded LLaMA-shaped checkpoint: peak RSS against in-memory decompose, wall time with 1 and 2 processes, per-layer times and their projection to 7B and 70B checkpoints"
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from common import add_common_args, print_machine, print_table, set_threads, timed, write_shards

# Each child prints one JSON line; `/usr/bin/time -f %M` gives its peak RSS (KB)
IN_MEMORY = """
from fasterai_fc.misc.fc_decomposer import FC_Decomposer
from fasterai_fc.misc.serialization import load_low_rank, save_low_rank
model = load_low_rank(sys.argv[1])   # the model, built on meta and loaded: what the CLI did before out-of-core
FC_Decomposer().decompose(model, param_ratio=float(sys.argv[3]), inplace=True, layers=sys.argv[5:] or None)
save_low_rank(model, sys.argv[2], max_shard_size=sys.argv[4])
"""
PER_LAYER = """
import json, time, torch
from fasterai_fc.misc.outofcore import checkpoint_files, plan, factorize_unit
from fasterai_fc.misc.serialization import meta_model
files = checkpoint_files(sys.argv[1])
units, _ = plan(meta_model(sys.argv[1]), files)
seen, times = set(), {}
for u in units:
    if u.target is None: continue
    shape = tuple(files[u.keys[0]].shape(u.keys[0]))
    if shape in seen: continue
    seen.add(shape)
    start = time.perf_counter()
    factorize_unit(u, files, ('param_ratio', float(sys.argv[2])))
    times['x'.join(map(str, shape))] = time.perf_counter() - start
print(json.dumps(times))
"""

def write_checkpoint(directory:Path, layers:int, hidden:int, intermediate:int, kv_width:int, vocab:int, dtype:torch.dtype, shard_mb:int):
    "A save_pretrained directory of a LLaMA-shaped model with random weights, written tensor by tensor (never whole in memory)"
    from transformers import LlamaConfig
    from fasterai_fc.misc.serialization import meta_model
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=hidden // 128, num_key_value_heads=kv_width // 128, tie_word_embeddings=False,
                         architectures=['LlamaForCausalLM'], dtype=str(dtype).split('.')[1])
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    state = meta_model(directory).state_dict()
    return write_shards(directory, state, lambda t: (torch.randn(t.shape) * 0.02).to(dtype) if t.dim() == 2 else torch.ones(t.shape, dtype=dtype), shard_mb)

def gram_ops(m:int, n:int) -> float:
    "Operation count of the Gram method for an m x n weight, as svd.py estimates it: the Gram product, then its eigendecomposition"
    k = min(m, n)
    return k * k * max(m, n) + 6 * k ** 3

# (name, layers, hidden, intermediate, kv width, vocab)
TARGETS = [('LLaMA-7B', 32, 4096, 11008, 4096, 32000), ('LLaMA-70B', 80, 8192, 28672, 1024, 32000)]

def linear_shapes(layers, hidden, intermediate, kv, vocab) -> list:
    "The (out, in) shape of every Linear of a LLaMA model, LM head included"
    block = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    return block * layers + [(vocab, hidden)]

READER = """
import json, resource, sys
import torch  # imported before the start: safe_open imports it on the first read
from pathlib import Path
from safetensors import safe_open
d, how = Path(sys.argv[1]), sys.argv[2]
by_file = {}
for name, f in json.loads((d/'model.safetensors.index.json').read_text())['weight_map'].items(): by_file.setdefault(f, []).append(name)
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for f, names in by_file.items():
    if how == 'shard':
        with safe_open(d/f, 'pt') as h:
            for n in names: t = h.get_tensor(n); t.sum(); del t  # summed: every page touched, as factorizing does
    else:
        for n in names:
            with safe_open(d/f, "pt") as h: t = h.get_tensor(n)
            t.sum()
            del t
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024))
"""

def memory_bound(root:Path, threads:int, quick:bool):
    "Peak RSS of the CLI over its import baseline against 4x the largest layer's fp32 size plus one output shard, at two depths"
    hidden, intermediate, vocab, shard = (256, 704, 1024, '4MB') if quick else (1024, 2816, 4096, '50MB')
    depths = (1, 4) if quick else (8, 32)
    print(f'LLaMA-shaped, hidden {hidden}, intermediate {intermediate}, vocab {vocab}, float32 on disk, input shards of 100 MB; '
          f'default rule (half the singular values); output shards of {shard}; {threads} thread(s); MB = 2^20 bytes')
    cli = shutil.which('fasterai_fc')
    write_checkpoint(root/'tiny', 1, 256, 512, 256, 1000, torch.float32, 20)
    baseline = timed([cli, 'decompose', root/'tiny', '-o', root/'tiny_out'], threads)[1]
    rows, readers = [], None
    for layers in depths:
        source = root/f'bound{layers}'
        size = write_checkpoint(source, layers, hidden, intermediate, hidden, vocab, torch.float32, 100) / 2**20
        largest = max(hidden * intermediate, hidden * vocab, hidden * hidden) * 4 / 2**20
        bound = 4 * largest + int(shard[:-2]) * 10**6 / 2**20
        wall, peak, _ = timed([cli, 'decompose', source, '-o', root/f'bound{layers}_out', '--max-shard-size', shard], threads)
        rows.append([f'{layers} blocks', f'{size:,.0f}', f'{largest:.0f}', f'{bound:.0f}', f'{peak - baseline:.0f}',
                     f'{(peak - baseline) / size:.2f}', 'yes' if peak - baseline <= bound else 'NO', f'{wall:.0f}'])
        if readers is None:
            readers = {how: json.loads(timed([sys.executable, '-c', READER, source, how], threads)[2]) for how in ('shard', 'tensor')}
        shutil.rmtree(source); shutil.rmtree(root/f'bound{layers}_out')
    print(f'import baseline (the CLI on a tiny checkpoint): {baseline:.0f} MB')
    print_table(['checkpoint', 'MB', 'largest layer fp32 MB', 'bound MB', 'peak over baseline MB', '/ checkpoint', 'within bound', 'wall s'], rows)
    print(f'Reading every tensor of the {depths[0]}-block checkpoint one at a time with safetensors.safe_open, peak RSS over the start: '
          f'{readers["shard"]:.0f} MB with one handle per shard (the mapped shard), {readers["tensor"]:.0f} MB with one handle per tensor '
          '(what SafetensorsFile.read does)\n')

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--bound', action='store_true', help='only the memory bound: peak RSS over the baseline at 8 and 32 blocks (about 3 minutes)')
    parser.add_argument('--layers', type=int, default=8, help='decoder layers (default 8; quick 1)')
    parser.add_argument('--dtype', default='float16', choices=['float16', 'bfloat16', 'float32'], help='dtype on disk')
    parser.add_argument('--param-ratio', type=float, default=0.5)
    parser.add_argument('--max-shard-size', default='200MB', help='output shards (the out-of-core peak holds one)')
    parser.add_argument('--dir', default=None, help='where the checkpoints go (default: a temporary directory, removed)')
    parser.add_argument('--select', nargs='+', default=None, metavar='PATTERN',
                        help='factorize only these layers (names or glob patterns, as --layers of the CLI); the rest is copied (default: all)')
    args = parser.parse_args()
    threads = set_threads(args.threads, args.quick)
    print_machine('Out-of-core decomposition of a sharded LLaMA-shaped checkpoint', args.quick)
    hidden, intermediate, vocab = (512, 1408, 4000) if args.quick else (2048, 5632, 32000)
    layers = 1 if args.quick else args.layers
    root = Path(args.dir or tempfile.mkdtemp(prefix='fc_ooc_'))
    if args.bound:
        try: return memory_bound(root, threads, args.quick)
        finally:
            if not args.dir: shutil.rmtree(root, ignore_errors=True)
    try:
        source = root/'llama'
        start = time.perf_counter()
        size = write_checkpoint(source, layers, hidden, intermediate, hidden, vocab, getattr(torch, args.dtype), 400 if not args.quick else 20)
        size_mb, n_shards = size / 2**20, len(list(source.glob('*.safetensors')))
        print(f'checkpoint: {layers} layers, hidden {hidden}, intermediate {intermediate}, vocab {vocab}, {args.dtype}, random weights: '
              f'{size_mb:,.0f} MB in {n_shards} shards (written in {time.perf_counter() - start:.0f} s)')
        print(f'param_ratio={args.param_ratio}, plain SVD, svd_method auto; output shards of {args.max_shard_size}; {threads} thread(s) per '
              'process unless said; peak RSS = /usr/bin/time %M of the process (the largest one under torchrun); MB = 2^20 bytes')
        print(f'factorized: {" ".join(args.select) if args.select else "every Linear layer"}; every other tensor is copied through\n')
        cli = shutil.which('fasterai_fc')
        rule = ['--param-ratio', str(args.param_ratio), '--max-shard-size', args.max_shard_size, *(['--layers', *args.select] if args.select else [])]
        write_checkpoint(root/'tiny', 1, 256, 512, 256, 1000, getattr(torch, args.dtype), 20)
        runs = {'CLI on a tiny checkpoint (baseline)': timed([cli, 'decompose', root/'tiny', '-o', root/'tiny_out'], threads),
                'out-of-core CLI, 1 process': timed([cli, 'decompose', source, '-o', root/'out1', *rule], threads),
                'in-memory decompose, 1 process': timed([sys.executable, '-c', f'import sys{IN_MEMORY}', source, root/'mem', args.param_ratio, args.max_shard_size, *(args.select or [])], threads),
                'out-of-core CLI, torchrun 2 x 1 thread': timed([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                                                              '--no-python', cli, 'decompose', source, '-o', root/'out2', *rule], 1)}
        baseline = runs['CLI on a tiny checkpoint (baseline)'][1]
        rows = [[name, f'{wall:.0f}', f'{peak:,.0f}', f'{peak - baseline:,.0f}', f'{(peak - baseline) / size_mb:.2f}'] for name, (wall, peak, _) in runs.items()]
        print_table(['run', 'wall s', 'peak RSS MB', 'over baseline', '/ checkpoint'], rows)
        print(compare(read(root/'out1'), read(root/'out2')) + '\n')

        _, _, out = timed([sys.executable, '-c', f'import sys{PER_LAYER}', source, args.param_ratio], threads)
        per_shape = json.loads(out.splitlines()[-1])
        shapes = {tuple(map(int, s.split('x'))): t for s, t in per_shape.items()}
        scale = sum(shapes.values()) / sum(gram_ops(*s) for s in shapes)  # seconds per operation, fitted on the measured shapes
        print('Per-layer time (read + factorize one layer, 1 process; model = the Gram operation count x the fitted rate):')
        print_table(['shape (out x in)', 'measured s', 'model s'], [[f'{m} x {n}', f'{t:.2f}', f'{scale * gram_ops(m, n):.2f}'] for (m, n), t in shapes.items()])
        measured = sum(shapes[s] for s in linear_shapes(layers, hidden, intermediate, hidden, vocab) if s in shapes)
        rows = [[f'this checkpoint ({layers} layers)', f'{len(linear_shapes(layers, hidden, intermediate, hidden, vocab))}', f'{measured / 60:.1f}', f'{measured / 120:.1f}', '']]
        for name, *shape in TARGETS:
            linears = linear_shapes(*shape)
            total = scale * sum(gram_ops(m, n) for m, n in linears)
            largest = max(linears, key=lambda s: s[0] * s[1])
            rows.append([name, f'{len(linears)}', f'{total / 60:.0f}', f'{total / 120:.0f}', f'{largest[0]} x {largest[1]}'])
        print('Projection from the fitted rate (SVD time only; reading and writing add about the disk time of the checkpoint):')
        print_table(['model', 'Linear layers', 'min, 1 process', 'min, 2 processes (ideal)', 'largest layer'], rows)
    finally:
        if not args.dir: shutil.rmtree(root, ignore_errors=True)

def read(directory:Path) -> dict:
    from fasterai_fc.misc.serialization import read_state_dict
    return read_state_dict(directory)

def compare(one:dict, two:dict) -> str:
    "How the torchrun result compares with the 1-process one: the same tensors, copies equal, factorized layers equal to float tolerance"
    if one.keys() != two.keys(): return 'torchrun result: NOT the same tensor names as the 1-process result'
    firsts = [k for k in one if k.endswith('.0.weight') and k[:-len('0.weight')] + '1.weight' in one]
    factors = {k for f in firsts for k in (f, f[:-len('0.weight')] + '1.weight')}
    copies = all(torch.equal(one[k], two[k]) for k in one if k not in factors)
    # the two runs use different thread counts, so BLAS rounds differently: compare the products, which fix the factors' signs
    product = lambda state, f: state[f[:-len('0.weight')] + '1.weight'].float() @ state[f].float()
    worst = max(float((product(one, f) - product(two, f)).norm() / product(one, f).norm()) for f in firsts)
    return (f'torchrun result against the 1-process result: same {len(one)} tensors; copied tensors identical: {copies}; '
            f'factorized layers (second @ first) differ by at most {worst:.1e} relative (Frobenius)')

if __name__ == '__main__': main()
