"""Diagnosis script of docs/models/dpti.md ("Learning from random initialisation"); run from the
repository root with PYTHONPATH=. . The logged figures (init_stats.log, steps.log) came from the model
before the fix (commit a51c3ce), whose configuration is DPTI(71, reduce_norm=False, query_std=256 ** -0.5, triplet_metric="euclidean", detach_rho=False);
today's code builds the same structure with that call, with other random draws."""
import os
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dpti_init_stats.py')).read().split('stats("default")')[0])
import torch.nn as nn
conv = m.reduce
def addbn(m):
    bn = nn.BatchNorm2d(256); m.reduce = nn.Sequential(conv, bn)
_st = stats
def stats(tag, **set_):
    m.templates.scale = 1.0
    _st(tag, **set_)
def stats2(tag, **set_):
    m.reduce = conv
    stats(tag, **set_)
stats2("default")
for qs in (None, 0.25, 1.0):
    kw = {"bn": addbn}
    if qs: kw["q"] = (lambda s: (lambda m: m.templates.part_queries.normal_(0, s)))(qs)
    stats(f"reduce+BN q {qs}", **kw); m.reduce = conv
    kw["s"] = lambda m: setattr(m.templates, "scale", 1/16)
    stats(f"reduce+BN q {qs} scale1/16", **kw); m.reduce = conv
