"Peak resident memory of decompose, copying vs inplace=True (and fasterai 0.4.1), each in a fresh process"
import argparse, ctypes, gc, json, subprocess, sys
import torch.nn as nn
from fasterai_fc.misc.fc_decomposer import FC_Decomposer, count_params
from common import add_common_args, set_threads, print_machine, print_table
from decompose_speed import bert_stack, ranks_at

MODES = ('build only', 'fasterai_fc copy', 'fasterai_fc inplace', 'fasterai 0.4.1')

def status_mb(field:str) -> float:
    "A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in MB"
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':')) / 1024

def reset_peak() -> bool:
    "Reset VmHWM to the current RSS (Linux clear_refs 5); False where the kernel does not allow it"
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False

def live_rss_mb() -> float:
    "RSS after a garbage collection and glibc's malloc_trim: memory still held by live objects, not freed pages kept by malloc"
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    return status_mb('VmRSS')

def decompose(mode:str, model:nn.Module, param_ratio:float):
    "Run the decomposition `mode` names; returns its result"
    if mode == 'build only': return model
    if mode == 'fasterai 0.4.1':
        from reference import fasterai_decompose  # only this child pays for importing the reference
        return fasterai_decompose(model, ranks_at(model, param_ratio))
    return FC_Decomposer().decompose(model, param_ratio=param_ratio, inplace=mode == 'fasterai_fc inplace')

def child(mode:str, blocks:int, param_ratio:float):
    "Build model (a), decompose it by `mode`, print the memory figures as one JSON line"
    model = bert_stack(blocks, 768, 3072, lambda out_features, in_features: nn.Linear(in_features, out_features))
    model_mb, baseline, was_reset = count_params(model) * 4 / 2**20, live_rss_mb(), reset_peak()
    result = decompose(mode, model, param_ratio)
    print(json.dumps(dict(model_mb=model_mb, baseline=baseline, peak=status_mb('VmHWM'), after=live_rss_mb(),
                          reset=was_reset, result_mb=count_params(result) * 4 / 2**20)))

def run_child(mode:str, blocks:int, param_ratio:float, threads:int) -> dict:
    "The figures of one `mode`, measured in a fresh Python process"
    cmd = [sys.executable, __file__, '--child', mode, '--blocks', str(blocks), '--param-ratio', str(param_ratio), '--threads', str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])

def row(mode:str, m:dict) -> list:
    "The table row of one mode's figures"
    extra = m['peak'] - m['baseline']
    return [mode, f'{m["model_mb"]:.0f}', f'{m["result_mb"]:.0f}', f'{m["baseline"]:.0f}', f'{m["peak"]:.0f}', f'{extra:.0f}',
            f'{extra / m["model_mb"]:.2f}', f'{m["after"]:.0f}']

def main():
    parser = add_common_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument('--param-ratio', type=float, default=0.5, help='param_ratio of the decomposition')
    parser.add_argument('--blocks', type=int, default=None, help='BERT blocks in model (a) (default 12, quick 2)')
    parser.add_argument('--child', choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads, blocks = set_threads(args.threads, args.quick), args.blocks or (2 if args.quick else 12)
    if args.child: return child(args.child, blocks, args.param_ratio)
    print_machine('Peak memory of decompose', args.quick)
    figures = {mode: run_child(mode, blocks, args.param_ratio, threads) for mode in MODES}
    if not all(m['reset'] for m in figures.values()): print('WARNING: could not reset VmHWM: peaks include building the model')
    print(f'Model (a): {blocks} blocks of 4 x Linear(768, 768), Linear(768, 3072), Linear(3072, 768), float32, default init;')
    print(f'param_ratio={args.param_ratio}, plain SVD (no data), svd_method auto. Each row is a fresh process: baseline = RSS after')
    print('building the model (torch imported), peak = VmHWM after decompose (reset after the build), after = RSS after')
    print('gc and malloc_trim with the original model and the result both referenced (the same object for inplace). MB = 2^20 bytes.\n')
    print_table(['mode', 'model MB', 'result MB', 'baseline RSS', 'peak RSS', 'peak - baseline', '/ model size', 'RSS after'],
                [row(mode, m) for mode, m in figures.items()])

if __name__ == '__main__': main()
