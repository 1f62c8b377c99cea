"Decomposition time at equal ranks: fasterai_fc (svd_method auto, gram, exact, randomized) vs fasterai 0.4.1 vs a plain torch.linalg.svd loop"
import argparse, gc
import torch
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, choose_rank, saves_parameters
from common import add_common_args, median_seconds, print_table, start
from reference import fasterai_decompose

def decaying_weight(out_features:int, in_features:int, gen:torch.Generator) -> torch.Tensor:
    "An out x in weight U diag(s) V^T: random orthonormal U and V, singular values s_i = i^-0.5 (a slowly decaying spectrum)"
    k = min(out_features, in_features)
    u = torch.linalg.qr(torch.randn(out_features, k, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(in_features, k, generator=gen)).Q
    return (u * torch.arange(1, k + 1, dtype=torch.float32).pow(-0.5)) @ v.T

def linear_with(weight:torch.Tensor) -> nn.Linear:
    "An `nn.Linear` holding `weight` and a zero bias"
    layer = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer

def bert_stack(blocks:int, hidden:int, ffn:int, make_linear) -> nn.Module:
    "`blocks` BERT-shaped blocks of `make_linear(out, in)`: query, key, value, output (hidden x hidden), up and down (hidden <-> ffn)"
    shapes = dict(query=(hidden, hidden), key=(hidden, hidden), value=(hidden, hidden), output=(hidden, hidden),
                  up=(ffn, hidden), down=(hidden, ffn))  # (out, in)
    return nn.ModuleList(nn.ModuleDict({name: make_linear(*shape) for name, shape in shapes.items()}) for _ in range(blocks))

def llm_mlp(hidden:int, ffn:int, gen:torch.Generator) -> nn.Module:
    "One LLaMA-7B-shaped MLP block: gate and up (hidden -> ffn), down (ffn -> hidden)"
    shapes = dict(gate=(ffn, hidden), up=(ffn, hidden), down=(hidden, ffn))
    return nn.ModuleDict({name: linear_with(decaying_weight(*shape, gen)) for name, shape in shapes.items()})

def ranks_at(model:nn.Module, param_ratio:float) -> dict:
    "Layer name -> the rank fasterai_fc's param_ratio rule gives it (layers where it saves nothing left out)"
    rule, ranks = ('param_ratio', param_ratio), {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            rank = choose_rank(rule, m.in_features, m.out_features)
            if saves_parameters(rank, m.in_features, m.out_features): ranks[name] = rank
    return ranks

def plain_svd(model:nn.Module, ranks:dict) -> dict:
    "Layer name -> factors `(U_r diag(s_r), V_r^T)` of its weight, from a full `torch.linalg.svd`"
    factors = {}
    for name, rank in ranks.items():
        u, s, vh = torch.linalg.svd(model.get_submodule(name).weight.detach(), full_matrices=False)
        factors[name] = (u[:, :rank] * s[:rank], vh[:rank])
    return factors

def factors_of(result, ranks:dict) -> dict:
    "Layer name -> `(second, first)` weights of a factorized model (or the factors themselves from `plain_svd`)"
    if isinstance(result, dict): return result
    return {name: (result.get_submodule(name)[1].weight.detach(), result.get_submodule(name)[0].weight.detach()) for name in ranks}

def top_sigma_error(second:torch.Tensor, first:torch.Tensor, exact:torch.Tensor) -> float:
    "Max relative error of the singular values of `second @ first` against the top ones of the original weight"
    rank = first.shape[0]
    r_factor = torch.linalg.qr(second.double()).R  # sigma(second @ first) = sigma(R @ first): a rank x in problem
    sigma = torch.linalg.svdvals(r_factor @ first.double())
    top = exact[:rank].double()
    return float(((sigma - top).abs() / top).max())

def methods(model:nn.Module, param_ratio:float, ranks:dict) -> dict:
    "Name -> a function decomposing `model` at `ranks`"
    ours = lambda svd_method: lambda: FC_Decomposer().decompose(model, param_ratio=param_ratio, svd_method=svd_method)
    return {'fasterai_fc auto': ours('auto'), 'fasterai_fc gram': ours('gram'), 'fasterai_fc exact': ours('exact'),
            'fasterai_fc randomized': ours('randomized'),
            'fasterai 0.4.1': lambda: fasterai_decompose(model, ranks), 'torch.linalg.svd loop': lambda: plain_svd(model, ranks)}

SKIPPABLE = ('fasterai_fc exact', 'torch.linalg.svd loop')  # the exact-SVD rows that `--fast` leaves out

def bench_model(label:str, model:nn.Module, ratios:list, repeats:int, skip:tuple=(), only:list|None=None) -> list:
    "Table rows: time and singular-value error of each method at each param_ratio"
    exact = {name: torch.linalg.svdvals(m.weight.detach()) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    rows = []
    for ratio in ratios:
        ranks, errors = ranks_at(model, ratio), {}
        def check(name, result):
            "Record the singular-value error of `result`, after checking it has `ranks`"
            factors = factors_of(result, ranks)
            assert {n: f[1].shape[0] for n, f in factors.items()} == ranks, f'{name} did not factorize at the expected ranks'
            errors[name] = max(top_sigma_error(*factors[n], exact[n]) for n in ranks)
        chosen = {n: f for n, f in methods(model, ratio, ranks).items() if n not in skip and (only is None or n in only or n == 'fasterai 0.4.1')}
        times = median_seconds(chosen, repeats, warmup=0, on_result=check)
        shown = sorted(set(ranks.values()))
        for name, t in times.items():
            rows.append([label, ratio, ','.join(map(str, shown)), name, f'{t:.3f}', f'{times["fasterai 0.4.1"] / t:.2f}x', f'{errors[name]:.1e}'])
        gc.collect()
    return rows

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--ratios', type=float, nargs='+', default=[0.5, 0.25], help='param_ratio values')
    parser.add_argument('--models', nargs='+', default=['a', 'b'], choices=['a', 'b'], help='which models to time')
    parser.add_argument('--methods', nargs='+', default=None, help="only these rows (and fasterai's), e.g. 'fasterai_fc auto'")
    parser.add_argument('--fast', action='store_true', help=f'leave out the rows {SKIPPABLE} (each a full exact SVD)')
    args = start(parser, 'Decomposition time')
    gen = torch.Generator().manual_seed(0)
    # (a) BERT-base: 12 blocks, 768 -> 3072; (b) LLaMA-7B MLP: 4096 -> 11008. Quick: the same structure, small.
    decaying_linear = lambda out_features, in_features: linear_with(decaying_weight(out_features, in_features, gen))
    stack = bert_stack(2, 256, 1024, decaying_linear) if args.quick else bert_stack(12, 768, 3072, decaying_linear)
    mlp = llm_mlp(512, 1376, gen) if args.quick else llm_mlp(4096, 11008, gen)
    stack_repeats, mlp_repeats = 3, 3 if args.quick else 1
    print('Weights: U diag(s) V^T with random orthonormal U, V and s_i = i^-0.5; zero biases. No calibration data.')
    print(f'(a) {len(stack)} blocks of 4 x Linear({stack[0].query.in_features}, {stack[0].query.out_features}), '
          f'Linear({stack[0].up.in_features}, {stack[0].up.out_features}), Linear({stack[0].down.in_features}, {stack[0].down.out_features}): '
          f'median of {stack_repeats} repeats')
    print(f'(b) Linear({mlp.gate.in_features}, {mlp.gate.out_features}) x 2, Linear({mlp.down.in_features}, {mlp.down.out_features}): '
          f'{"median of %d repeats" % mlp_repeats if mlp_repeats > 1 else "1 repeat (a full SVD of the large layers takes tens of seconds)"}')
    print('Methods run in turn within each repeat; fasterai runs at the percent_removed giving the same rank per layer.\n')
    skip = SKIPPABLE if args.fast else ()
    head = ['model', 'param_ratio', 'ranks', 'method', 'time (s)', 'fasterai time / time', 'max rel. err. top-r sigma']
    for key, label, model, repeats in (('a', '(a) BERT stack', stack, stack_repeats), ('b', '(b) 7B MLP', mlp, mlp_repeats)):
        if key in args.models: print_table(head, bench_model(label, model, args.ratios, repeats, skip, args.methods)); print(flush=True)

if __name__ == '__main__': main()
