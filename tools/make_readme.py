"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does, without Quarto); `--check` fails when it is stale."""
import base64, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NB, README, IMG_DIR = ROOT/'nbs'/'index.ipynb', ROOT/'README.md', 'readme_files'
HEADER = '<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n'

def _hidden(src): return re.search(r'^#\|\s*hide\b', src, re.M) is not None
def _code(src): return '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()

def _outputs(cell, idx, images):
    "Markdown for a code cell's outputs; images are added to `images` as {path: bytes}"
    parts = []
    for j, out in enumerate(cell.get('outputs', [])):
        data = out.get('data', {})
        if 'image/png' in data:
            path = f'{IMG_DIR}/cell-{idx}-output-{j}.png'
            images[path] = base64.b64decode(''.join(data['image/png']))
            parts.append(f'![]({path})')
        elif 'text/markdown' in data: parts.append(''.join(data['text/markdown']).strip())
        else:
            text = ''.join(out.get('text', '') or data.get('text/plain', ''))
            if text.strip() and out.get('name') != 'stderr': parts.append('```\n' + text.rstrip() + '\n```')
    return parts

def render():
    "The README text and its images, from the index notebook"
    cells, images, parts = json.loads(NB.read_text())['cells'], {}, []
    for i, cell in enumerate(cells):
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown': parts.append(src.strip())
        elif cell['cell_type'] == 'code' and not _hidden(src):
            if _code(src): parts.append('```python\n' + _code(src) + '\n```')
            parts += _outputs(cell, i, images)
    return HEADER + '\n\n'.join(p for p in parts if p) + '\n', images

def main(check=False):
    text, images = render()
    stale = [p for p, b in images.items() if not (ROOT/p).exists() or (ROOT/p).read_bytes() != b]
    if README.read_text() != text if README.exists() else True: stale.append('README.md')
    if check:
        if stale: sys.exit(f"README is stale ({', '.join(stale)}): run python tools/make_readme.py and commit")
        return print('README.md is up to date with nbs/index.ipynb')
    for p in (ROOT/IMG_DIR).glob('*.png'):
        if f'{IMG_DIR}/{p.name}' not in images: p.unlink()
    for p, b in images.items(): (ROOT/p).parent.mkdir(exist_ok=True); (ROOT/p).write_bytes(b)
    README.write_text(text)

if __name__ == '__main__': main(check='--check' in sys.argv[1:])
