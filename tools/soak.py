"""Kill the out-of-core CLI with SIGKILL at random moments, rerun after each, and check that nothing is lost.

For each kill: a fresh OUT, `fasterai_fc decompose CKPT -o OUT` started (in one process, or under torchrun with two
ranks, where one rank chosen at random is killed), killed at a moment drawn uniformly over the work (from the moment
OUT's incomplete marker appears to the moment it is removed, in an uninterrupted run), then rerun to the end. Checked after each kill:
OUT does not look complete to a loader (no index or model.safetensors next to a config.json) unless it equals the
uninterrupted run; the rerun exits 0 and ends with the same files and tensors as the uninterrupted run.

    python tools/soak.py [--kills 20] [--modes 1,2] [--seed 0]
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

def build(directory:Path):
    "A small LLaMA-style checkpoint in several shards (random weights, a tiny config)"
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(vocab_size=2000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, max_shard_size='10MB')

def command(source:Path, out:Path, world:int) -> list:
    cli = [shutil.which('fasterai_fc'), 'decompose', str(source), '-o', str(out), '--param-ratio', '0.5', '--max-shard-size', '4MB']
    if world == 1: return cli
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(world), '--no-python', *cli]

def children(pid:int) -> list:
    "Every descendant of `pid`, from /proc"
    try: direct = [int(c) for t in os.listdir(f'/proc/{pid}/task') for c in open(f'/proc/{pid}/task/{t}/children').read().split()]
    except OSError: return []
    return direct + [d for c in direct for d in children(c)]

def rank_of(pid:int):
    try: env = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
    except OSError: return None
    return next((int(e[5:]) for e in env if e.startswith(b'RANK=')), None)

def state_dict(directory:Path) -> dict:
    from fasterai_fc.misc.serialization import read_state_dict
    return {k: v.clone() for k, v in read_state_dict(directory).items()}

def same(a:Path, b:Path) -> bool:
    "Same file names, same side files, same tensors"
    import torch
    names = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    if names[0] != names[1]: return False
    one, two = state_dict(a), state_dict(b)
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)

def looks_complete(out:Path) -> bool:
    "What a loader accepts: a config.json and either the index or model.safetensors"
    return (out/'config.json').is_file() and ((out/'model.safetensors.index.json').is_file() or (out/'model.safetensors').is_file())

def timed_run(cmd:list, out:Path, env:dict) -> tuple:
    "`(seconds from the marker's creation to its removal, return code)` of an uninterrupted run: the window where a kill lands mid-run"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out/'.fasterai_fc_incomplete'
    while proc.poll() is None and not marker.exists(): time.sleep(0.001)
    start = time.perf_counter()
    while proc.poll() is None and marker.exists(): time.sleep(0.001)
    work = time.perf_counter() - start
    return work, proc.wait()

def trial(source:Path, out:Path, ref:Path, world:int, work:float, rng, env:dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(command(source, out, world), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and not (out/'.fasterai_fc_incomplete').exists(): time.sleep(0.002)
    delay = rng.uniform(0, work)
    time.sleep(delay)
    victim, killed = proc.pid, False
    if world > 1:
        ranks = {rank_of(p): p for p in children(proc.pid)}
        ranks.pop(None, None)
        if ranks: victim = ranks[rng.choice(sorted(ranks))]
    try: os.kill(victim, signal.SIGKILL); killed = proc.poll() is None
    except ProcessLookupError: pass
    try: proc.wait(timeout=120)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    time.sleep(0.2)  # torchrun's other rank is torn down
    for p in children(proc.pid): os.kill(p, signal.SIGKILL)
    complete = looks_complete(out)
    premature = complete and not same(out, ref)
    if complete and not premature and not (out/'.fasterai_fc_incomplete').exists():  # the kill came after the run was done
        return dict(delay=round(delay, 3), killed=killed, finished_first=True, premature=False, rerun_rc=None, equal=True, error=[])
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    rerun = subprocess.run(command(source, out, world), env=env, capture_output=True, text=True)
    return dict(delay=round(delay, 3), killed=killed, finished_first=False, left=left, premature=premature, rerun_rc=rerun.returncode,
                equal=rerun.returncode == 0 and same(out, ref), error=[l for l in rerun.stderr.splitlines() if 'fasterai_fc' in l and 'rror' in l][-2:] if rerun.returncode else [])

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kills', type=int, default=20)
    parser.add_argument('--modes', default='1,2', help='world sizes: 1 (one process), 2 (torchrun, one rank killed)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp())
    try:
        build(tmp/'ckpt')
        print(f"checkpoint: {sum(p.stat().st_size for p in (tmp/'ckpt').glob('*.safetensors')) / 2**20:.1f} MB; load {os.getloadavg()[0]:.2f}")
        print('| world | kills | done before the kill | killed, then rerun | incomplete OUT a loader accepts | OUT equal to the uninterrupted run | data lost | work s |')
        print('|---|---|---|---|---|---|---|---|')
        for world in map(int, args.modes.split(',')):
            ref = tmp/f'ref{world}'
            work, rc = timed_run(command(tmp/'ckpt', ref, world), ref, env)
            assert rc == 0, f'the uninterrupted run failed ({rc})'
            rows = [trial(tmp/'ckpt', tmp/f'out{world}', ref, world, work, rng, env) for _ in range(args.kills)]
            for r in rows:
                if not r['equal'] or r['premature']: print('FAILED', json.dumps(r), file=sys.stderr)
            print(f"| {world} | {len(rows)} | {sum(r['finished_first'] for r in rows)} | {sum(not r['finished_first'] for r in rows)} | {sum(r['premature'] for r in rows)} | "
                  f"{sum(r['equal'] for r in rows)} | {sum(not r['equal'] for r in rows)} | {work:.2f} |", flush=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
