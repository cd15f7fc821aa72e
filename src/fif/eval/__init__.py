"""Evaluation: zero-shot classification and retrieval of a CLIP (:mod:`fif.eval.zeroshot`) and the
stream metrics A_KA / A_ZS / GM, forgetting and transfer over a score matrix (:mod:`fif.eval.metrics`)."""
