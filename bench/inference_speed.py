"Inference latency of dense vs factorized Linear layers and a small MLP, against the FLOP ratio r(in+out)/(in*out)"
import argparse, time
from fractions import Fraction
import torch
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, LowRankLinear, count_flops
from common import add_common_args, median_seconds, print_table, start

def bert_mlp() -> nn.Module:
    "The MLP of a BERT-base block: Linear(768, 3072), GELU, Linear(3072, 768)"
    return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768))

def factorized(model:nn.Module, fraction:Fraction) -> nn.Module:
    "`model` with every Linear factorized at `fraction` of min(in, out), even where that saves nothing"
    rank = int(fraction * min(min(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)))
    return FC_Decomposer().decompose(model, rank=rank, force=True).eval()

def repeats_for(fn, seconds:float, most:int) -> int:
    "How many calls of `fn` fit in about `seconds` (at least 10, at most `most`)"
    start = time.perf_counter()
    fn()
    return max(10, min(most, int(seconds / max(time.perf_counter() - start, 1e-7))))

def bench_pair(label:str, shape:str, dense:nn.Module, fraction:Fraction, batch:int, seconds:float, most:int) -> list:
    "One table row: latency of `dense` and of its factorization at `fraction` on a batch of `batch` rows"
    low = factorized(dense, fraction)
    x = torch.randn(batch, next(dense.parameters()).shape[1])
    flop_ratio = count_flops(low) / count_flops(dense)
    with torch.inference_mode():
        fns = {'dense': lambda: dense(x), 'factorized': lambda: low(x)}
        if isinstance(low, LowRankLinear): fns['bare'] = bare_products(low, x) # the floor: BLAS alone, no module at all
        repeats = repeats_for(fns['dense'], seconds / 2, most)
        times = median_seconds(fns, repeats, warmup=3)
    speedup = times['dense'] / times['factorized']
    bare = f'{times["dense"] / times["bare"] * flop_ratio:.0%}' if 'bare' in times else '-'
    ranks = sorted({m.rank for m in low.modules() if isinstance(m, LowRankLinear)})
    return [label, shape, batch, f'{fraction} ({",".join(map(str, ranks))})', f'{flop_ratio:.3f}', repeats,
            f'{times["dense"] * 1e3:.3f}', f'{times["factorized"] * 1e3:.3f}', f'{speedup:.2f}x', f'{speedup * flop_ratio:.0%}', bare]

def bare_products(low:LowRankLinear, x:torch.Tensor):
    "The two matrix products of `low` as bare `torch.mm`/`torch.addmm` calls on pre-transposed contiguous factors"
    first_t, second_t, bias = low[0].weight.T.contiguous(), low[1].weight.T.contiguous(), low[1].bias
    return lambda: torch.addmm(bias, torch.mm(x, first_t), second_t)

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--seconds', type=float, default=None, help='time budget per (model, rank, batch) cell (default 2, quick 0.2)')
    args = start(parser, 'Inference latency')
    sizes = [(512, 512), (768, 3072)] if args.quick else [(512, 512), (1024, 1024), (2048, 2048), (4096, 4096), (768, 3072)]
    fractions = [Fraction(1, 2), Fraction(1, 8)] if args.quick else [Fraction(1, n) for n in (2, 4, 8, 16)]
    batches = [1, 32] if args.quick else [1, 32, 256]
    seconds, most = args.seconds or (0.2 if args.quick else 2.0), 200 if args.quick else 2000
    models = [('Linear', f'{i}->{o}', nn.Linear(i, o).eval()) for i, o in sizes] + [('MLP (GELU)', '768->3072->768', bert_mlp().eval())]
    print('rank = fraction x min(in, out), factorized with fasterai_fc (force=True: 1/2 of a square layer saves nothing);')
    print('torch.inference_mode, float32, 3 warm-up calls, then dense and factorized called in turn, median of the repeats')
    print(f'(about {seconds} s per cell). FLOP ratio = r(in+out)/(in*out); ideal speedup = 1 / FLOP ratio; '
          f'fraction of ideal = speedup x FLOP ratio.')
    print('Last column: the same for the two products alone (torch.mm then torch.addmm on pre-transposed factors, no module):')
    print('the floor set by the BLAS on these shapes.\n')
    rows = [bench_pair(label, shape, model, f, b, seconds, most) for label, shape, model in models for b in batches for f in fractions]
    print_table(['model', 'shape', 'batch', 'rank fraction (rank)', 'FLOP ratio', 'repeats', 'dense (ms)', 'factorized (ms)',
                 'speedup', 'fraction of ideal', 'bare GEMMs: fraction of ideal'], rows)

if __name__ == '__main__': main()
