"fasterai 0.4.1's FC_Decomposer, the reference, driven at the ranks fasterai_fc chose (pip install --no-deps fasterai==0.4.1)"
import copy
import torch.nn as nn
from fasterai.misc import fc_decomposer as fasterai_fcd

def percent_removed_for(rank:int, layer:nn.Linear) -> float:
    "The `percent_removed` for which fasterai's rule int((1 - p) * min(in, out)) gives `rank`"
    full = min(layer.in_features, layer.out_features)
    p = 1 - (rank + 0.5) / full  # mid-interval: no float rounding can move int() off `rank`
    assert max(1, int((1 - p) * full)) == rank, (rank, full, p)
    return p

def fasterai_decompose(model:nn.Module, ranks:dict, data=None, n_batches:int=5) -> nn.Module:
    "fasterai's `FC_Decomposer.decompose` loop (activation RMS, deep copy, `SVD` per layer) with a rank per layer name"
    scales = {}
    if data is not None:
        rms = fasterai_fcd._collect_activation_rms(model, data, nn.Linear, n_batches)
        scales = {name: rms[m] for name, m in model.named_modules() if m in rms}
    decomposer, new = fasterai_fcd.FC_Decomposer(), copy.deepcopy(model)
    for name, rank in ranks.items():
        layer = new.get_submodule(name)
        parent, _, child = name.rpartition('.')
        setattr(new.get_submodule(parent), child, decomposer.SVD(layer, percent_removed_for(rank, layer), None, scales.get(name)))
    return new

def factorized_ranks(report) -> dict:
    "Layer name -> rank of the layers a fasterai_fc report factorized"
    return {r.name: r.rank for r in report if r.rank is not None}
