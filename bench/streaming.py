"Calibrated out-of-core decomposition (fasterai_fc decompose DIR --data FILE): peak RSS and wall time on sharded LLaMA-shaped checkpoints of two depths, 1 process against torchrun 2, and the projection to a 7B model from the measured per-block cost"
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from common import add_common_args, print_machine, print_table, set_threads, timed, write_shards

def write_checkpoint(directory:Path, layers:int, hidden:int, intermediate:int, vocab:int, shard_mb:int, tokenizer) -> int:
    "A save_pretrained directory of a LLaMA-shaped float32 model with random weights, written tensor by tensor, with `tokenizer`; its bytes"
    from transformers import LlamaConfig
    from fasterai_fc.misc.serialization import meta_model
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 128), num_key_value_heads=max(1, hidden // 128), tie_word_embeddings=False,
                         architectures=['LlamaForCausalLM'], dtype='float32', pad_token_id=0)
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    return write_shards(directory, meta_model(directory).state_dict(), lambda t: torch.randn(t.shape, generator=generator) * 0.02 if t.dim() == 2 else torch.ones(t.shape), shard_mb)

def word_tokenizer(sentences:list):
    "A word-level tokenizer trained on `sentences` (offline, in a second), as transformers saves and loads it"
    import tokenizers
    from transformers import PreTrainedTokenizerFast
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token='[UNK]'))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    words.train_from_iterator(sentences, tokenizers.trainers.WordLevelTrainer(special_tokens=['[PAD]', '[UNK]', '[EOS]'], vocab_size=8000))
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token='[PAD]', unk_token='[UNK]', eos_token='[EOS]')

def block_ops(hidden:int, intermediate:int, kv:int, tokens:int) -> float:
    "Operation count of one LLaMA block in the pipeline: the eigendecomposition of each input Gram matrix (9 n^3), the Gram method's SVD of each whitened weight (k^2 max + 6 k^3), the forward passes and the Gram products"
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    grams = {hidden: 2, intermediate: 1}  # the distinct inputs: attention and MLP inputs of width hidden, the down projection's
    svd = sum(min(m, n) ** 2 * max(m, n) + 6 * min(m, n) ** 3 for m, n in shapes)
    eig = sum(count * 9 * n ** 3 for n, count in grams.items())
    forward = 2 * 2 * tokens * sum(m * n for m, n in shapes) + sum(count * 2 * tokens * n * n for n, count in grams.items())
    return svd + eig + forward

def compare(one:Path, two:Path) -> str:
    "How the torchrun result compares with the 1-process one: the same tensors and ranks, the factorized layers equal to float tolerance"
    from fasterai_fc.misc.serialization import read_state_dict
    a, b = read_state_dict(one), read_state_dict(two)
    if a.keys() != b.keys(): return 'torchrun result: NOT the same tensor names (so not the same ranks) as the 1-process result'
    firsts = [k for k in a if k.endswith('.0.weight') and k[:-len('0.weight')] + '1.weight' in a]
    product = lambda state, f: state[f[:-len('0.weight')] + '1.weight'].double() @ state[f].double()
    worst = max(float((product(a, f) - product(b, f)).norm() / product(a, f).norm()) for f in firsts)
    return (f'torchrun 2 against 1 process: same {len(a)} tensors and shapes (so the same ranks); '
            f'factorized layers (second @ first) differ by at most {worst:.1e} relative (Frobenius)')

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--layers', type=int, default=32, help='blocks of the first checkpoint; the second has twice as many (default 32; quick 2)')
    parser.add_argument('--param-ratio', type=float, default=0.5)
    parser.add_argument('--sentences', type=int, default=128, help='calibration sentences (default 128; quick 16)')
    parser.add_argument('--max-length', type=int, default=64, help='tokens per sentence at most')
    parser.add_argument('--max-shard-size', default='50MB', help='output parts (the peak holds one)')
    parser.add_argument('--dir', default=None, help='where the checkpoints go (default: a temporary directory, removed)')
    args = parser.parse_args()
    threads = set_threads(args.threads, args.quick)
    print_machine('Calibrated out-of-core decomposition of sharded LLaMA-shaped checkpoints', args.quick)
    from fasterai_fc.misc.examples import stdlib_sentences
    hidden, intermediate = (256, 688) if args.quick else (512, 1408)
    depths = [2, 4] if args.quick else [args.layers, 2 * args.layers]
    n_sentences = 16 if args.quick else args.sentences
    sentences = stdlib_sentences()
    tokenizer = word_tokenizer(sentences)
    root = Path(args.dir or tempfile.mkdtemp(prefix='fc_stream_'))
    try:
        (root/'data.txt').write_text('\n'.join(sentences[:n_sentences]) + '\n')
        sizes = {}
        for depth in depths:
            sizes[depth] = write_checkpoint(root/f'llama{depth}', depth, hidden, intermediate, 8000, 20 if args.quick else 200, tokenizer) / 2**20
        write_checkpoint(root/'tiny', 1, 64, 128, 8000, 20, tokenizer)
        tokens = int(sum(min(len(tokenizer(s)['input_ids']), args.max_length) for s in sentences[:n_sentences]))
        print(f'checkpoints: LLaMA-shaped, hidden {hidden}, intermediate {intermediate}, vocab 8000, float32, random weights: '
              + ', '.join(f'{d} blocks {sizes[d]:,.0f} MB' for d in depths))
        print(f'calibration: {n_sentences} sentences of the standard library\'s docstrings, at most {args.max_length} tokens each '
              f'({tokens} tokens), batches of 8, word-level tokenizer; method whiten, param_ratio={args.param_ratio}, output parts of '
              f'{args.max_shard_size}; {threads} thread(s) per process unless said; peak RSS = /usr/bin/time %M of the process '
              '(the largest one under torchrun); MB = 2^20 bytes\n')
        cli = shutil.which('fasterai_fc')
        calibrated = ['--data', root/'data.txt', '--max-length', args.max_length, '--param-ratio', args.param_ratio, '--max-shard-size', args.max_shard_size]
        torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '--no-python', cli]
        runs = {'baseline: the same CLI on a 1-block checkpoint of hidden 64': (timed([cli, 'decompose', root/'tiny', '-o', root/'tiny_out', *calibrated], threads), None)}
        for depth in depths:
            runs[f'{depth} blocks, 1 process'] = (timed([cli, 'decompose', root/f'llama{depth}', '-o', root/f'out{depth}', *calibrated], threads), depth)
        runs[f'{depths[0]} blocks, torchrun 2 x 1 thread'] = (timed([*torchrun, 'decompose', root/f'llama{depths[0]}', '-o', root/f'out{depths[0]}_2', *calibrated], 1), depths[0])
        baseline = runs['baseline: the same CLI on a 1-block checkpoint of hidden 64'][0][1]
        rows = []
        for name, ((wall, peak, _), depth) in runs.items():
            over = peak - baseline
            rows.append([name, f'{sizes[depth]:,.0f}' if depth else '', f'{wall:.1f}', f'{peak:,.0f}', f'{over:,.0f}' if depth else '',
                         f'{over / sizes[depth]:.2f}' if depth else ''])
        print_table(['run', 'checkpoint MB', 'wall s', 'peak RSS MB', 'over baseline MB', 'over / checkpoint'], rows)
        print(compare(root/f'out{depths[0]}', root/f'out{depths[0]}_2') + '\n')

        (short, _), (long, _) = runs[f'{depths[0]} blocks, 1 process'], runs[f'{depths[1]} blocks, 1 process']
        per_block = (long[0] - short[0]) / (depths[1] - depths[0])  # what one more block costs: start-up, embeddings and head cancel out
        fixed = short[0] - depths[0] * per_block
        measured, target = block_ops(hidden, intermediate, hidden, tokens), block_ops(4096, 11008, 4096, tokens)
        block_7b = per_block * target / measured
        print(f'measured per-block cost: {per_block:.2f} s (wall difference of the two depths / {depths[1] - depths[0]}); the rest of a run: {fixed:.1f} s')
        print('Projection to LLaMA-7B (32 blocks, hidden 4096, intermediate 11008), from the per-block cost scaled by the operation count '
              f'of a block (eigendecompositions, SVDs, forward passes; x{target / measured:.0f}), on this CPU at {threads} thread(s):')
        print_table(['model', 'blocks', 'per block s', 'blocks total min', 'one block fp32 MB'],
                    [[f'measured (hidden {hidden})', depths[1], f'{per_block:.2f}', f'{per_block * depths[1] / 60:.1f}', f'{(4 * hidden**2 + 3 * hidden * intermediate) * 4 / 2**20:,.0f}'],
                     ['LLaMA-7B', 32, f'{block_7b:.0f}', f'{block_7b * 32 / 60:.0f}', f'{(4 * 4096**2 + 3 * 4096 * 11008) * 4 / 2**20:,.0f}']])
        print(json.dumps({'sizes_mb': sizes, 'runs': {name: {'wall_s': w, 'peak_mb': p} for name, ((w, p, _), _) in runs.items()},
                          'baseline_mb': baseline, 'per_block_s': per_block, 'block_7b_s': block_7b}))
    finally:
        if not args.dir: shutil.rmtree(root, ignore_errors=True)

if __name__ == '__main__': main()
