"Inference latency of a stock nn.TransformerEncoder (fast path) against its factorized feed-forward layers"
import argparse, copy
import torch
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, count_params
from common import add_common_args, median_seconds, print_table, start

def encoder(d_model:int, ff:int, layers:int) -> nn.Module:
    "A stock encoder in eval mode, batch first: the configuration PyTorch's fast path serves"
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model, 8, ff, batch_first=True), layers,
                                 enable_nested_tensor=False).eval()

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--ratios', type=float, nargs='+', default=[0.5, 0.25], help='param_ratio of linear1/linear2')
    args = start(parser, 'stock nn.TransformerEncoder: dense (fast path) vs factorized feed-forward')
    d_model, ff, n_layers, batch, tokens = (64, 256, 2, 2, 16) if args.quick else (512, 2048, 6, 8, 128)
    dense = encoder(d_model, ff, n_layers)
    x = torch.randn(batch, tokens, d_model)
    models = {'dense (fast path)': dense}
    slow = copy.deepcopy(dense)
    for layer in slow.layers: layer.activation_relu_or_gelu = 0
    models['dense (ordinary path)'] = slow
    for q in args.ratios:
        models[f'factorized ffn, param_ratio={q}'] = FC_Decomposer().decompose(dense, param_ratio=q, layers='layers.*.linear*')
    with torch.inference_mode():
        ref = dense(x)
        for m in models.values(): assert (m(x) - ref).abs().max() < 10, 'outputs diverged'  # same shapes, finite
        times = median_seconds({k: (lambda m=m: m(x)) for k, m in models.items()}, repeats=5 if args.quick else 30, warmup=2)
    base = times['dense (fast path)']
    rows = [[k, f'{count_params(models[k]):,}', f'{t * 1e3:.2f}', f'{base / t:.2f}x'] for k, t in times.items()]
    print(f'd_model {d_model}, dim_feedforward {ff}, {n_layers} layers, batch {batch} x {tokens} tokens; median of the runs')
    print_table(['model', 'params', 'ms', 'speedup vs fast path'], rows)

if __name__ == '__main__': main()
