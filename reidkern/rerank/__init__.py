"""k-reciprocal re-ranking and Jaccard distance (Zhong et al., CVPR 2017), exact and O(N k) memory.

* :func:`k_reciprocal` -- re-ranked [Q, G] distance from query and gallery features.
* :func:`k_reciprocal_from_distances` -- the same from torchreid-style distance matrices.
* :func:`jaccard_distance` -- sparse all-pairs Jaccard distance for DBSCAN (scipy CSR).
"""
from reidkern.rerank.k_reciprocal import jaccard_distance, k_reciprocal, k_reciprocal_from_distances

__all__ = ["k_reciprocal", "k_reciprocal_from_distances", "jaccard_distance"]
