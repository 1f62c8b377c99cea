"""Mutation testing of the notebooks: plant one plausible bug at a time in a copy of the repository and see whether
`nbdev_test` notices. The mutants are listed in tools/mutants.toml; CONTRIBUTING.md says how to run and extend it."""
import argparse, configparser, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time, tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT/'tools'/'mutants.toml'
FIELDS = {'id', 'notebook', 'description', 'find', 'replace', 'equivalent'}
ID_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*') # an id names its copy's directory
EXPORT_RE = re.compile(r'^\s*#\|\s*export[is]?\b', re.M) # nbdev 2's export, exporti and exports directives
BIN = Path(sys.executable).parent # nbdev_export and nbdev_test of the venv running this script

class UsageError(Exception): "A problem with the command line or the mutant list: exit code 2"

@dataclass
class Mutant:
    id:str
    notebook:str           # Path relative to the repository root, e.g. nbs/misc/ranks.ipynb
    description:str        # The plausible bug it models
    find:str               # Exact snippet, once in the notebook's export cells
    replace:str
    equivalent:str|None=None # Why the change cannot be observed; such mutants are not counted

@dataclass
class Result:
    mutant:Mutant
    status:str             # killed, survived, timeout, invalid, equivalent
    killer:str|None=None   # The notebook whose test failed
    seconds:float=0.0
    detail:str=''          # Why invalid, or the tail of the failing test's output

# ---------------------------------------------------------------- the mutant list

def _snippet(text:str) -> str:
    "A TOML multi-line string minus one trailing newline, so the closing ''' can sit on its own line"
    return text[:-1] if text.endswith('\n') else text

def load_mutants(path:Path) -> list:
    "The mutants of the TOML file at `path`, checked for shape"
    try: entries = tomllib.loads(path.read_text()).get('mutant', [])
    except (OSError, tomllib.TOMLDecodeError) as e: raise UsageError(f"cannot read {path}: {e}") from None
    mutants, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{path.name}: mutant #{i + 1} ({e.get('id', 'no id')})"
        if extra := set(e) - FIELDS: raise UsageError(f"{where}: unknown keys {sorted(extra)}")
        if missing := FIELDS - {'equivalent'} - set(e): raise UsageError(f"{where}: missing keys {sorted(missing)}")
        if bad := [k for k, v in e.items() if not isinstance(v, str)]: raise UsageError(f"{where}: {bad} must be strings")
        if not ID_RE.fullmatch(e['id']): raise UsageError(f"{where}: an id is letters, digits, '-', '_' and '.'")
        if e['id'] in seen: raise UsageError(f"{where}: duplicate id")
        seen.add(e['id'])
        mutants.append(Mutant(e['id'], e['notebook'], ' '.join(e['description'].split()), _snippet(e['find']),
                              _snippet(e['replace']), e.get('equivalent')))
    return mutants

def _export_cells(nb:dict) -> list:
    "`(index, source)` of the cells nbdev_export writes to the package"
    cells = [(i, c['source'] if isinstance(c['source'], str) else ''.join(c['source'])) for i, c in enumerate(nb['cells'])
             if c.get('cell_type') == 'code']
    return [(i, src) for i, src in cells if EXPORT_RE.search(src)]

def validate(m:Mutant, root:Path) -> tuple:
    "`(cell index, None)` where `m` applies in the repository at `root`, or `(None, why it is invalid)`"
    path = root/m.notebook
    if not path.is_file(): return None, f"no notebook {m.notebook}"
    if not m.find: return None, "find is empty"
    if m.find == m.replace: return None, "replace is the same as find"
    try: nb = json.loads(path.read_text())
    except (OSError, ValueError) as e: return None, f"cannot read {m.notebook}: {e}"
    hits = [(i, src) for i, src in _export_cells(nb) for _ in range(src.count(m.find))]
    if len(hits) != 1: return None, f"find occurs {len(hits)} times in the export cells of {m.notebook}, not once"
    index, src = hits[0]
    for what, code in (('the original', src), ('the mutated', src.replace(m.find, m.replace))):
        try: compile(code, f'{m.notebook}[cell {index}]', 'exec', dont_inherit=True)
        except SyntaxError as e: return None, f"{what} cell {index} does not compile: {e.msg} (line {e.lineno})"
    return index, None

# ---------------------------------------------------------------- copies and child processes

def snapshot(dest:Path):
    "Copy the working tree's tracked and untracked-but-not-ignored files (uncommitted edits included) to `dest`"
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, out.decode().split('\0')):
        src = ROOT/name
        if not (src.is_file() or src.is_symlink()): continue # deleted in the working tree
        (dest/name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest/name, follow_symlinks=False)

def _settings(root:Path) -> configparser.SectionProxy:
    cfg = configparser.ConfigParser()
    cfg.read(root/'settings.ini')
    return cfg['DEFAULT']

def _env(root:Path) -> dict:
    "The children's environment: the copy's package first on the path (the venv's editable install points at the checkout)"
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(root), env.get('PYTHONPATH')]))
    return env

_stop = threading.Event() # set on Ctrl-C: every child is killed, no new one starts

class Interrupted(Exception): "Raised in the worker threads once Ctrl-C was pressed"

def _kill(p:subprocess.Popen):
    # nbdev_test runs notebooks in worker processes: end the whole group
    try: os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError: pass

def run(cmd:list, root:Path, log:Path, timeout:float, cancel:threading.Event|None=None) -> str:
    "Run `cmd` in the copy at `root`, output to `log`: 'ok', 'failed', 'timeout' or 'cancelled'"
    if _stop.is_set(): raise Interrupted
    if cancel is not None and cancel.is_set(): return 'cancelled'
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'wb') as out:
        p = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try: return 'ok' if p.wait(timeout=0.5) == 0 else 'failed'
                except subprocess.TimeoutExpired: pass
                if _stop.is_set(): _kill(p); raise Interrupted
                if cancel is not None and cancel.is_set(): _kill(p); return 'cancelled'
                if time.monotonic() > deadline: _kill(p); return 'timeout'
        finally: p.wait()

def _tail(log:Path, lines:int=12) -> str:
    "The end of a log, before nbdev_test's list of failed notebooks"
    text = log.read_text(errors='replace').partition('nbdev Tests Failed On The Following Notebooks')[0]
    return '\n'.join(text.rstrip().splitlines()[-lines:])

def _lib_files(root:Path) -> dict:
    lib = root/_settings(root).get('lib_path', root.name)
    return {p.relative_to(root): p.read_bytes() for p in sorted(lib.rglob('*.py'))}

def notebooks_to_test(root:Path) -> list:
    "The notebooks `nbdev_test` runs in the copy at `root`, relative to it"
    from nbdev.doclinks import nbglob # here, not at the top: --list and --check run on any Python 3.11
    found = nbglob(str(root/_settings(root).get('nbs_path', 'nbs')), as_path=True)
    return [str(p.relative_to(root)) for p in found if not (p.parent/'.notest').exists()]

# ---------------------------------------------------------------- one mutant

@dataclass
class Options:
    base:Path        # The exported snapshot every mutant copy starts from
    notebooks:list   # What nbdev_test runs, relative to the root
    timeout:float
    owner_only:bool
    workers:int      # Notebooks tested at once, for the other notebooks
    keep:bool        # Leave the mutant's copy (and its logs in .mutation/) behind

def _test_rest(m:Mutant, copy:Path, opts:Options) -> tuple:
    "`(status, killer, log)` of the notebooks other than the owner; stops at the first failure"
    cancel, status = threading.Event(), 'survived'
    def one(nb):
        log = copy/'.mutation'/(nb.replace('/', '__') + '.log')
        return nb, log, run([str(BIN/'nbdev_test'), '--path', nb], copy, log, opts.timeout, cancel)
    with ThreadPoolExecutor(opts.workers) as pool:
        for fut in as_completed([pool.submit(one, nb) for nb in opts.notebooks if nb != m.notebook]):
            nb, log, outcome = fut.result()
            if outcome == 'failed' and not cancel.is_set():
                cancel.set()
                return 'killed', nb, log
            if outcome == 'timeout': status = 'timeout'
    return status, None, None

def run_mutant(m:Mutant, work:Path, opts:Options) -> Result:
    "Apply `m` to a fresh copy of the snapshot, export, and run the tests: owner first, then the others"
    start = time.monotonic()
    result = lambda status, killer=None, detail='': Result(m, status, killer, time.monotonic() - start, detail)
    index, why = validate(m, opts.base)
    if why: return result('invalid', detail=why)
    copy = work/m.id
    shutil.copytree(opts.base, copy, symlinks=True)
    try:
        path = copy/m.notebook
        nb = json.loads(path.read_text())
        cell = nb['cells'][index]
        src = cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])
        cell['source'] = src.replace(m.find, m.replace).splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
        log = copy/'.mutation'/'export.log'
        if run([str(BIN/'nbdev_export')], copy, log, opts.timeout) != 'ok': return result('invalid', detail='nbdev_export failed:\n' + _tail(log))
        if _lib_files(copy) == _lib_files(opts.base): return result('invalid', detail='the exported package did not change')
        log = copy/'.mutation'/'owner.log'
        outcome = run([str(BIN/'nbdev_test'), '--path', m.notebook], copy, log, opts.timeout)
        if outcome == 'failed': return result('killed', m.notebook, _tail(log))
        if opts.owner_only: return result('timeout' if outcome == 'timeout' else 'survived')
        status, killer, log = _test_rest(m, copy, opts)
        if outcome == 'timeout' and status == 'survived': status = 'timeout'
        return result(status, killer, _tail(log) if log else '')
    finally:
        if not opts.keep: shutil.rmtree(copy, ignore_errors=True)

# ---------------------------------------------------------------- command line

def _ids(only:str|None) -> list: return [i.strip() for i in (only or '').split(',') if i.strip()]

def _select(mutants:list, only:str|None, notebook:str|None) -> list:
    if only:
        ids = _ids(only)
        known = {m.id for m in mutants}
        if unknown := [i for i in ids if i not in known]: raise UsageError(f"--only: no mutant {', '.join(unknown)}")
        mutants = [m for m in mutants if m.id in ids]
    if notebook:
        target = Path(notebook).resolve()
        mutants = [m for m in mutants if (ROOT/m.notebook).resolve() == target]
        if not mutants: raise UsageError(f"--notebook: no mutant of {notebook}")
    return mutants

def _line(r:Result, width:int) -> str:
    by = f'by {r.killer}' if r.killer else 'not run' if r.status == 'equivalent' else ''
    return f'{r.mutant.id:<{width}}  {r.status:<10} {by:<36} {r.seconds:6.1f} s'

def summary(results:list, owner_only:bool) -> str:
    "The kill rate, then the survivors, timeouts, invalid mutants and equivalents"
    counted = [r for r in results if r.status in ('killed', 'survived', 'timeout') and not r.mutant.equivalent]
    killed = [r for r in counted if r.status == 'killed']
    rate = f'{len(killed) / len(counted):.0%}' if counted else 'n/a'
    out = [f'kill rate: {len(killed)}/{len(counted)} non-equivalent mutants killed ({rate})'
           + (' [--owner-only: each mutant ran only its own notebook, a lower bound]' if owner_only else '')]
    def section(title, rows):
        if rows: out.extend([title, *[f'  {row}' for row in rows]])
    section('survived:', [f'{r.mutant.id} ({r.mutant.notebook}): {r.mutant.description}' for r in counted if r.status == 'survived'])
    section('timed out (not counted as killed; rerun with a larger --timeout):', [f'{r.mutant.id}: {r.mutant.description}' for r in counted if r.status == 'timeout'])
    section('invalid (fix the entry):', [f'{r.mutant.id}: {r.detail.splitlines()[0] if r.detail else ""}' for r in results if r.status == 'invalid'])
    section('equivalent (not counted):', [f'{r.mutant.id}: {r.mutant.equivalent}' + (f' [ran: {r.status}'
                                          + (f' by {r.killer}: the claim is wrong' if r.status == 'killed' else '') + ']'
                                          if r.status != 'equivalent' else '') for r in results if r.mutant.equivalent])
    return '\n'.join(out)

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Exit code 0 whatever the results (this is a measurement, not a test); 2 on a usage error.')
    p.add_argument('--mutants', type=Path, default=MUTANTS, help='The mutant list (default: %(default)s)')
    p.add_argument('--only', metavar='ID[,ID]', help='Only these mutants (equivalent ones named here are run too)')
    p.add_argument('--notebook', metavar='PATH', help='Only the mutants of this notebook')
    p.add_argument('--list', action='store_true', help='List the mutants and exit')
    p.add_argument('--check', action='store_true', help='Validate the mutants against the working tree, run no test')
    p.add_argument('--jobs', type=int, default=1, metavar='N', help='Mutants tested at once (default: 1)')
    p.add_argument('--workers', type=int, metavar='N', help='Other notebooks tested at once per mutant (default: CPUs / jobs)')
    p.add_argument('--timeout', type=float, default=600, metavar='S', help='Limit of each nbdev_test call in seconds (default: 600)')
    p.add_argument('--owner-only', action='store_true', help="Run only each mutant's own notebook: faster, a lower bound on kills")
    p.add_argument('--keep', action='store_true', help="Keep the temporary copies and their logs (each copy's .mutation/)")
    p.add_argument('-v', '--verbose', action='store_true', help='Show why each invalid mutant is invalid, and the end of the failing test')
    return p

def _width(mutants:list) -> int: return max((len(m.id) for m in mutants), default=0)

def _check(mutants:list) -> None:
    bad = 0
    for m in mutants:
        _, why = validate(m, ROOT)
        bad += why is not None
        print(f"{m.id:<{_width(mutants)}}  {'invalid: ' + why if why else 'ok'}" + (' (equivalent)' if m.equivalent else ''))
    print(f'{len(mutants) - bad}/{len(mutants)} mutants valid')

def _run_all(mutants:list, args) -> list:
    work = Path(tempfile.mkdtemp(prefix='mutation-'))
    try:
        base = work/'_base'
        snapshot(base)
        log = work/'_base.log'
        if run([str(BIN/'nbdev_export')], base, log, args.timeout) != 'ok':
            raise UsageError(f"nbdev_export fails on the unmutated working tree:\n{_tail(log)}")
        opts = Options(base, notebooks_to_test(base), args.timeout, args.owner_only,
                       args.workers or max(1, (os.cpu_count() or 1) // args.jobs), args.keep)
        results = {m.id: Result(m, 'equivalent') for m in mutants if m.equivalent and m.id not in _ids(args.only)}
        for r in results.values(): print(_line(r, _width(mutants)), flush=True)
        pool = ThreadPoolExecutor(args.jobs)
        try:
            for fut in as_completed([pool.submit(run_mutant, m, work, opts) for m in mutants if m.id not in results]):
                r = fut.result()
                results[r.mutant.id] = r
                print(_line(r, _width(mutants)), flush=True)
                if args.verbose and r.detail: print('    ' + r.detail.replace('\n', '\n    '), flush=True)
        except KeyboardInterrupt:
            _stop.set() # the running children are killed by their threads, the queued mutants never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return [results[m.id] for m in mutants]
    finally:
        if args.keep: print(f'copies kept in {work}')
        else: shutil.rmtree(work, ignore_errors=True)

def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.jobs < 1 or (args.workers is not None and args.workers < 1) or args.timeout <= 0:
            raise UsageError('--jobs, --workers and --timeout must be positive')
        mutants = _select(load_mutants(args.mutants), args.only, args.notebook)
        if args.list:
            for m in mutants: print(f'{m.id:<{_width(mutants)}}  {m.notebook:<32} {m.description}' + (f' [equivalent: {m.equivalent}]' if m.equivalent else ''))
            return 0
        if args.check: _check(mutants); return 0
        print(summary(_run_all(mutants, args), args.owner_only))
    except UsageError as e:
        print(f'mutation.py: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0

if __name__ == '__main__': sys.exit(main())
